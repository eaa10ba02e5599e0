"""synthembed: the open, runnable version of "Improving Text Embeddings with Large Language Models" (Wang et al., 2024).

Stages, one module each: languages/prompts -> llm -> generate -> data -> model/pooling/losses -> train -> evaluate,
plus passkey (long context), plots, and study/cli on top. See README.md for the study and the command line.
"""

__version__ = "0.1.0"
