import pytest

from diskgnn.errors import OutputExistsError
from diskgnn.manifest import MANIFEST_NAME, finish_output_dir, prepare_output_dir, write_manifest


def test_kill_between_manifest_and_marker_counts_as_finished(tmp_path):
    out = prepare_output_dir(tmp_path / "o", overwrite=False)
    (out / "data.bin").write_bytes(b"x" * 7)
    write_manifest(out, "diskgnn.test", 1, {})
    assert (out / ".diskgnn-partial").exists()  # as if killed before finish_output_dir
    with pytest.raises(OutputExistsError, match="finished diskgnn output"):
        prepare_output_dir(out, overwrite=False)
    # the rerun leaves the finished output exactly as an uninterrupted run would
    assert sorted(p.name for p in out.iterdir()) == ["data.bin", MANIFEST_NAME]


def test_unfinished_output_is_cleared_and_foreign_files_refused(tmp_path):
    out = prepare_output_dir(tmp_path / "o", overwrite=False)
    (out / "half.bin").write_bytes(b"y")
    out = prepare_output_dir(out, overwrite=False)  # no manifest: never looked complete, cleared
    assert [p.name for p in out.iterdir()] == [".diskgnn-partial"]
    finish_output_dir(out)
    (out / "mine.txt").write_text("user file")
    with pytest.raises(OutputExistsError, match="did not write"):
        prepare_output_dir(out, overwrite=False)
