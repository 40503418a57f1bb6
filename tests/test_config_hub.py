"""``PruningConfig`` like other Hugging Face configs: save/load a directory, push to and load from the Hub
(revision, subfolder, cache, token), and its fields on the command line through ``HfArgumentParser``
(issue 12, item 6). The Hub is replaced by an in-memory one; everything else is real."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
from huggingface_hub import HfApi, RepoUrl
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import get_session
from transformers import HfArgumentParser, TrainingArguments

from hf_prune import PruningArguments, PruningConfig, PruningConfigError
from hf_prune.config import CONFIG_NAME

CONFIG = PruningConfig(pruning_init=0.1, pruning_flops_target=0.4, pruning_steps=5, channel_multiple=16,
                       ignored_scopes=["conv1"])


def hub_error(cls: type[HfHubHTTPError], message: str) -> HfHubHTTPError:
    """A Hub client error as the client raises it (huggingface_hub >= 1.0 requires the HTTP response, of the
    HTTP library its session uses)."""
    try:
        return cls(message)
    except TypeError:
        http = importlib.import_module(type(get_session()).__module__.split(".")[0])
        return cls(message, response=http.Response(404, request=http.Request("GET", "https://huggingface.co")))


class FakeHub:
    """Files by (repo, revision, path); ``hf_hub_download`` copies them into ``cache_dir`` as the Hub client does."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str, str], bytes] = {}
        self.repos: set[str] = set()
        self.calls: list[dict[str, Any]] = []

    def create_repo(self, api: HfApi, repo_id: str, **kwargs: Any) -> RepoUrl:
        self.repos.add(repo_id)
        self.calls.append({"create_repo": repo_id, "token": api.token, **kwargs})
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_file(self, api: HfApi, *, path_or_fileobj: bytes, path_in_repo: str, repo_id: str,
                    revision: str | None = None, **kwargs: Any) -> str:
        self.files[(repo_id, revision or "main", path_in_repo)] = path_or_fileobj
        self.calls.append({"upload_file": path_in_repo, "repo_id": repo_id, "revision": revision, **kwargs})
        return f"https://huggingface.co/{repo_id}/commit/1"

    def download(self, repo_id: str, filename: str, *, subfolder: str | None = None, revision: str | None = None,
                 cache_dir: Any = None, token: Any = None) -> str:
        self.calls.append({"download": repo_id, "token": token})
        if repo_id not in self.repos:
            raise hub_error(RepositoryNotFoundError, f"404 Client Error. Repository Not Found for url: .../{repo_id}")
        revision = revision or "main"
        if not any(r == repo_id and rev == revision for r, rev, _ in self.files):
            raise hub_error(RevisionNotFoundError, f"404 Client Error. Revision Not Found: {revision}")
        path = f"{subfolder}/{filename}" if subfolder else filename
        if (repo_id, revision, path) not in self.files:
            raise hub_error(EntryNotFoundError, f"404 Client Error. Entry Not Found: {path}")
        local = Path(cache_dir) / repo_id / revision / path
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(self.files[(repo_id, revision, path)])
        return str(local)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    fake = FakeHub()
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: fake.create_repo(self, repo_id, **kw))
    monkeypatch.setattr(HfApi, "upload_file", lambda self, **kw: fake.upload_file(self, **kw))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.download)
    return fake


def test_save_and_load_a_directory(tmp_path: Path) -> None:
    path = CONFIG.save_pretrained(tmp_path / "run")
    assert json.loads(path.read_text())["format_version"] == 1
    assert PruningConfig.from_pretrained(tmp_path / "run") == CONFIG
    assert PruningConfig.from_pretrained(tmp_path, subfolder="run") == CONFIG
    assert PruningConfig.from_pretrained(path) == CONFIG
    CONFIG.to_file(tmp_path / "plain.json")  # an NNCF algorithm dict (no format_version) loads too
    assert PruningConfig.from_pretrained(tmp_path / "plain.json") == CONFIG


def test_push_to_hub_and_load_back(hub: FakeHub, tmp_path: Path) -> None:
    url = CONFIG.push_to_hub("me/pruning", subfolder="resnet", revision="v1", private=True, token="hf_x")
    assert url.endswith("/commit/1")
    assert {"create_repo": "me/pruning", "token": "hf_x", "private": True, "exist_ok": True} in hub.calls
    assert json.loads(hub.files[("me/pruning", "v1", f"resnet/{CONFIG_NAME}")])["format_version"] == 1
    loaded = PruningConfig.from_pretrained("me/pruning", subfolder="resnet", revision="v1",
                                           cache_dir=tmp_path / "cache", token="hf_x")
    assert loaded == CONFIG
    assert hub.calls[-1] == {"download": "me/pruning", "token": "hf_x"}
    assert Path(tmp_path / "cache" / "me/pruning/v1/resnet" / CONFIG_NAME).is_file()


def test_hub_errors_name_the_repository(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="me/nothing: no such Hub repository"):
        PruningConfig.from_pretrained("me/nothing", cache_dir=tmp_path)
    CONFIG.push_to_hub("me/pruning")
    with pytest.raises(FileNotFoundError, match=r"me/pruning \(revision v9\): the Hub repository has no such revision"):
        PruningConfig.from_pretrained("me/pruning", revision="v9", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=f"me/pruning: the Hub repository has no vit/{CONFIG_NAME}"):
        PruningConfig.from_pretrained("me/pruning", subfolder="vit", cache_dir=tmp_path)


def test_neither_a_path_nor_a_repository_id(tmp_path: Path) -> None:
    """No network: the Hub client refuses the id before any request."""
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(FileNotFoundError, match=f"{missing}: neither a local directory or file nor a Hub repository id"):
        PruningConfig.from_pretrained(missing)


def test_offline_and_not_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match=f"me/pruning: cannot download {CONFIG_NAME} from the Hub"):
        PruningConfig.from_pretrained("me/pruning", cache_dir=tmp_path)


def test_file_from_a_newer_hf_prune(tmp_path: Path) -> None:
    path = CONFIG.save_pretrained(tmp_path)
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 2}))
    with pytest.raises(PruningConfigError, match=rf"(?s)in {path}.*format_version: 2 is not supported.*upgrade hf_prune"):
        PruningConfig.from_pretrained(tmp_path)


def test_failed_save_leaves_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = CONFIG.save_pretrained(tmp_path)
    before = path.read_bytes()

    def crash(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        PruningConfig(pruning_target=0.2).save_pretrained(tmp_path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == [CONFIG_NAME]


def parse(*argv: str) -> tuple[TrainingArguments, Any]:
    return HfArgumentParser((TrainingArguments, PruningArguments)).parse_args_into_dataclasses(
        ["--output_dir", "unused", *argv])


def test_command_line_arguments() -> None:
    _, args = parse()
    assert args.to_config() == PruningConfig()
    training, args = parse("--learning_rate", "0.01", "--pruning_flops_target", "0.4", "--pruning_init", "0.1",
                           "--pruning_steps", "5", "--channel_multiple", "16", "--ignored_scopes", "conv1",
                           "--prune_first_conv", "true", "--schedule", "baseline")
    assert training.learning_rate == 0.01
    config = args.to_config()
    assert config.params.pruning_flops_target == 0.4 and config.params.channel_multiple == 16
    assert config.params.prune_first_conv and config.params.schedule == "baseline"
    assert config.ignored_scopes == ["conv1"] and config.pruning_init == 0.1
    _, args = parse("--channel_multiple", "auto")
    assert args.to_config().params.channel_multiple == "auto"
    with pytest.raises(SystemExit):  # argparse refuses a value outside a Literal's choices
        parse("--filter_importance", "L3")
    _, args = parse("--pruning_target", "1.5")
    with pytest.raises(PruningConfigError, match="params.pruning_target"):
        args.to_config()


def test_command_line_overrides_a_config_file(tmp_path: Path) -> None:
    CONFIG.save_pretrained(tmp_path)
    _, args = parse("--pruning_config", str(tmp_path), "--pruning_steps", "9", "--validate_scopes", "false")
    config = args.to_config()
    assert config.params.pruning_steps == 9 and not config.validate_scopes
    assert config.params.pruning_flops_target == 0.4 and config.ignored_scopes == ["conv1"]  # kept from the file
