"""The generation stage (the paper's section 3.1): synthetic examples from an LLM, resumable and cached.

prompts (what is asked) -> plan (every request of a run) -> llm + backends + cache + cost (asking) -> parsing + dedup
(judging the replies) -> pipeline (a run) -> rundir (its files) -> stats (its numbers); commands holds
`synthembed generate` and `synthembed stats`, preview what notebook 01 shows of the prompts.
"""
