"""Config: every key from one table, all problems reported together, Windows paths mapped."""

from pathlib import Path

import pytest

from zip2pacs.config import KEYS, ConfigError, load_config, parse_config
from zip2pacs.paths import resolve_path, windows_to_wsl

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value.problems


def test_shipped_config_loads_with_paths_relative_to_its_folder():
    config = load_config(REPO / "config.yaml")
    assert config.watch_dir == REPO / "incoming"
    assert config.failed_dir == REPO / "failed"
    assert (config.peer.host, config.peer.port, config.peer.ae_title) == ("127.0.0.1", 4242, "ORTHANC")


def test_empty_file_gives_every_default(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config.watch_dir == tmp_path / "incoming"
    assert config.dedup_policy == "uid_then_sha256"
    assert config.send_batch_size == 25
    assert config.limits.nested_zip_depth == 1


def test_unknown_key_is_named_with_the_keys_expected(tmp_path):
    problems = problems_of(tmp_path, "dicom:\n  peer_prot: 4242\n")
    assert len(problems) == 1
    assert "At 'dicom.peer_prot': unknown key" in problems[0]
    assert "peer_port" in problems[0]


def test_unknown_section_is_named(tmp_path):
    assert "At 'dicomm': unknown section" in problems_of(tmp_path, "dicomm: {}\n")[0]


def test_port_that_is_not_a_number_names_the_range(tmp_path):
    problems = problems_of(tmp_path, "dicom:\n  peer_port: abc\n")
    assert problems == ["At 'dicom.peer_port': expected an integer 1-65535, got 'abc'"]


def test_port_out_of_range_is_refused(tmp_path):
    assert "expected an integer 1-65535, got 70000" in problems_of(tmp_path, "dicom:\n  peer_port: 70000\n")[0]


@pytest.mark.parametrize("title", ["A" * 17, "BAD\\AE", "   "])
def test_bad_ae_titles_are_refused(tmp_path, title):
    problems = problems_of(tmp_path, f"dicom:\n  local_ae_title: '{title}'\n")
    assert problems[0].startswith("At 'dicom.local_ae_title': expected an AE title of 1-16")


def test_unknown_dedup_policy_lists_the_choices(tmp_path):
    problems = problems_of(tmp_path, "behavior:\n  dedup_policy: sha1\n")
    assert problems == ["At 'behavior.dedup_policy': expected one of uid_then_sha256, uid_only, sha256_only, got 'sha1'"]


def test_boolean_must_be_a_boolean(tmp_path):
    problems = problems_of(tmp_path, "behavior:\n  delete_extracted_after_upload: 'yes please'\n")
    assert "expected true or false" in problems[0]


def test_all_problems_are_reported_together(tmp_path):
    problems = problems_of(tmp_path, "dicom:\n  peer_port: 0\n  foo: 1\nbehavior:\n  send_batch_size: -1\n")
    assert len(problems) == 3


def test_section_that_is_not_a_mapping_is_refused(tmp_path):
    assert "At 'paths': expected a mapping" in problems_of(tmp_path, "paths: incoming\n")[0]


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "cannot read the config file" in info.value.problems[0]


def test_invalid_yaml_is_a_config_error(tmp_path):
    assert "not valid YAML" in problems_of(tmp_path, "paths: [unclosed\n")[0]


def test_document_that_is_not_a_mapping_is_refused(tmp_path):
    with pytest.raises(ConfigError):
        parse_config(["a", "b"], tmp_path / "c.yaml")


def test_windows_paths_map_to_wsl_mounts(tmp_path):
    assert windows_to_wsl(r"E:\exames\incoming") == "/mnt/e/exames/incoming"
    assert windows_to_wsl("E:/exames/incoming/") == "/mnt/e/exames/incoming"
    assert windows_to_wsl("c:\\") == "/mnt/c"
    assert windows_to_wsl("/mnt/e/x") is None
    assert resolve_path(r"D:\in", tmp_path) == Path("/mnt/d/in")
    assert resolve_path("in", tmp_path) == tmp_path / "in"


def test_windows_path_in_config_is_never_taken_literally(tmp_path):
    config = load_config(write(tmp_path, "paths:\n  watch_dir: 'E:\\exames\\incoming'\n"))
    assert config.watch_dir == Path("/mnt/e/exames/incoming")


def test_every_key_is_documented_in_the_readme_with_its_default():
    readme = (REPO / "README.md").read_text()
    for key in KEYS:
        assert f"`{key.dotted}`" in readme, f"{key.dotted} is not documented in README.md"


def test_shipped_config_lists_every_key_with_its_default():
    import yaml

    shipped = yaml.safe_load((REPO / "config.yaml").read_text())
    for key in KEYS:
        assert key.name in shipped.get(key.section, {}), f"config.yaml lacks {key.dotted}"
        value = shipped[key.section][key.name]
        assert value == key.default or (value == "" and key.default in ("", None)), f"{key.dotted}: {value!r}"
