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
    assert problems == [
        "At 'behavior.dedup_policy': expected one of uid_then_sha256, uid_only, sha256_only, got 'sha1'"
    ]


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


def test_invalid_yaml_keeps_the_line_and_column_of_the_mistake(tmp_path):
    problems = problems_of(
        tmp_path,
        "paths:\n  watch_dir: incoming\n\ndicom:\n  peer_port: 4242\n  peer_host: x\n   peer_ae_title: ORTHANC\n",
    )
    assert len(problems) == 1
    assert problems[0].startswith("At line 7, column 17: not valid YAML: ")
    assert "mapping values are not allowed here" in problems[0]


def test_invalid_yaml_names_where_the_unfinished_construct_began(tmp_path):
    [problem] = problems_of(tmp_path, "paths: [unclosed\n")
    assert problem.startswith("At line 2, column 1: not valid YAML: expected ',' or ']'")
    assert "(while parsing a flow sequence that began at line 1, column 8)" in problem


def test_quoted_port_says_that_it_is_quoted(tmp_path):
    problems = problems_of(tmp_path, 'dicom:\n  peer_port: "4242"\n')
    assert problems == ["At 'dicom.peer_port': expected an integer 1-65535, got the string '4242' (remove the quotes)"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("dicom:\n  acse_timeout: '30'\n", "At 'dicom.acse_timeout': expected a number, got the string '30'"),
        ("dicom:\n  acse_timeout: '2.5'\n", "At 'dicom.acse_timeout': expected a number, got the string '2.5'"),
        ("dicom:\n  use_tls: 'false'\n", "At 'dicom.use_tls': expected true or false, got the string 'false'"),
        (
            'limits:\n  max_entries: "10"\n',
            "At 'limits.max_entries': expected an integer 1-2147483648, got the string '10'",
        ),
    ],
)
def test_any_quoted_number_or_boolean_says_to_remove_the_quotes(tmp_path, line, expected):
    assert problems_of(tmp_path, line) == [expected + " (remove the quotes)"]


def test_a_string_that_is_no_number_even_unquoted_is_not_called_quoted(tmp_path):
    assert problems_of(tmp_path, "dicom:\n  peer_port: '42x'\n") == [
        "At 'dicom.peer_port': expected an integer 1-65535, got '42x'"
    ]


def test_archive_dir_equal_to_watch_dir_is_refused_naming_both_keys(tmp_path):
    problems = problems_of(tmp_path, "paths:\n  archive_dir: incoming\n")
    assert problems == [
        f"At 'paths.archive_dir': expected a folder apart from paths.watch_dir, got {tmp_path / 'incoming'}, the same folder"
    ]


@pytest.mark.parametrize(
    ("paths", "key", "other", "relation"),
    [
        ("  failed_dir: incoming/failed\n", "paths.failed_dir", "paths.watch_dir", "inside it"),
        ("  watch_dir: work/in\n", "paths.watch_dir", "paths.work_dir", "inside it"),
        ("  work_dir: archive\n", "paths.archive_dir", "paths.work_dir", "the same folder"),
        ("  watch_dir: ./x/../failed/\n", "paths.failed_dir", "paths.watch_dir", "the same folder"),
        ("  archive_dir: /mnt/e/in/done\n  watch_dir: 'E:\\in'\n", "paths.archive_dir", "paths.watch_dir", "inside it"),
    ],
)
def test_folders_that_are_the_same_or_nested_are_refused(tmp_path, paths, key, other, relation):
    problems = problems_of(tmp_path, "paths:\n" + paths)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"At '{key}': expected a folder apart from {other}, got ")
    assert problems[0].endswith(f", {relation}")


def test_a_symlink_to_the_watch_folder_is_the_same_folder(tmp_path):
    (tmp_path / "incoming").mkdir()
    (tmp_path / "done").symlink_to(tmp_path / "incoming")
    [problem] = problems_of(tmp_path, "paths:\n  archive_dir: done\n")
    assert problem.startswith("At 'paths.archive_dir': expected a folder apart from paths.watch_dir")


def test_folders_beside_each_other_with_a_common_prefix_are_fine(tmp_path):
    config = load_config(write(tmp_path, "paths:\n  watch_dir: in\n  archive_dir: in-done\n  failed_dir: in_failed\n"))
    assert config.archive_dir == tmp_path / "in-done"


def test_a_folder_key_that_names_an_existing_file_is_refused(tmp_path):
    (tmp_path / "incoming").write_text("not a folder")
    problems = problems_of(tmp_path, "")
    assert problems == [f"At 'paths.watch_dir': expected a folder, got the file {tmp_path / 'incoming'}"]


def test_a_file_key_that_names_an_existing_folder_is_refused(tmp_path):
    (tmp_path / "state" / "uploader.sqlite3").mkdir(parents=True)
    (tmp_path / "logs.d").mkdir()
    problems = problems_of(tmp_path, "logging:\n  file: logs.d\n")
    assert problems == [
        f"At 'paths.state_db': expected a file, got the folder {tmp_path / 'state' / 'uploader.sqlite3'}",
        f"At 'logging.file': expected a file, got the folder {tmp_path / 'logs.d'}",
    ]


def test_ledger_and_log_file_must_be_different_files(tmp_path):
    [problem] = problems_of(tmp_path, "paths:\n  state_db: logs/uploader.log\n")
    assert problem == (
        f"At 'logging.file': expected a file apart from paths.state_db, got {tmp_path / 'logs' / 'uploader.log'}, "
        "the same file"
    )


def test_new_keys_have_their_defaults(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config.unreadable_zip_grace_seconds == 600.0
    assert config.move_zip_to_archive is True
    assert config.log_pynetdicom_debug is False


def test_the_original_scripts_keys_are_accepted(tmp_path):
    text = "behavior:\n  move_zip_to_archive: false\n  unreadable_zip_grace_seconds: 0\nlogging:\n  enable_pynetdicom_debug: true\n"
    config = load_config(write(tmp_path, text))
    assert (config.move_zip_to_archive, config.log_pynetdicom_debug, config.unreadable_zip_grace_seconds) == (
        False,
        True,
        0.0,
    )


def test_a_negative_grace_for_unreadable_zips_is_refused(tmp_path):
    problems = problems_of(tmp_path, "behavior:\n  unreadable_zip_grace_seconds: -1\n")
    assert problems == ["At 'behavior.unreadable_zip_grace_seconds': expected a number of seconds >= 0, got -1"]
