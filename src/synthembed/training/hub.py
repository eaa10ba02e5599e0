"""Upload an export to the Hugging Face Hub: the repository made if missing, then the folder in one commit.

    from synthembed.training.hub import push_to_hub
    push_to_hub("runs/train/synthetic/merged", "my-org/synthembed-gemma-270m")   # needs a token (HF_TOKEN)

The token is huggingface_hub's own: HF_TOKEN, else the one `hf auth login` stored. Nothing here runs without one.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SynthembedError


def hub_token(repo_id: str) -> str:
    """huggingface_hub's token (HF_TOKEN, else the stored login), or a SynthembedError saying how to set one."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise SynthembedError(
            f"--push-to-hub {repo_id}: no Hugging Face token; set HF_TOKEN to a token with write access "
            "(https://huggingface.co/settings/tokens) or log in with `hf auth login`"
        )
    return token


def push_to_hub(directory: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str | None = None) -> str:  # fmt: skip
    """create_repo (exist_ok) and upload_folder of `directory` to the model repository `repo_id`; returns its URL.

    A missing token, an invalid repo id or a refusal by the Hub is a SynthembedError naming the repository.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    token = token or hub_token(repo_id)
    directory = Path(directory)
    if not (directory / "modules.json").is_file():
        raise SynthembedError(f"--push-to-hub: {directory} is not a sentence-transformers export (no modules.json)")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id, folder_path=str(directory), repo_type="model",
            commit_message=commit_message or f"Upload {directory.name} exported by synthembed",
        )  # fmt: skip
    except HFValidationError as err:
        raise SynthembedError(f"--push-to-hub {repo_id}: {err}") from None
    except HfHubHTTPError as err:
        raise SynthembedError(f"--push-to-hub {repo_id}: the Hub refused: {str(err).splitlines()[0]}") from None
    return str(url)
