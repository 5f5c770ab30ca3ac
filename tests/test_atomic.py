"""Atomic writes leave ordinary files behind: the mode open() would give, or the replaced file's."""

import os
import stat

from ocrloop.atomic import atomic_write_text


def test_new_files_get_the_usual_mode_and_replaced_files_keep_theirs(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    fresh = atomic_write_text(tmp_path / "report.html", "<html></html>")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask
    private = tmp_path / "secret.json"
    private.write_text("{}")
    private.chmod(0o600)
    atomic_write_text(private, '{"a": 1}')
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and private.read_text() == '{"a": 1}'
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
