"""The progress display: one redrawn line on a terminal, plain lines otherwise."""

from __future__ import annotations

import io

from edgefl._progress import Progress, ProgressState, format_table


def test_plain_output_prints_a_line_per_new_version_or_accuracy() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=False)
    progress.update(ProgressState(version=1, max_version=5))
    progress.update(ProgressState(version=1, max_version=5, accepted=3))  # nothing new to say
    progress.update(ProgressState(version=2, max_version=5, accepted=5))
    progress.update(ProgressState(version=2, max_version=5, accepted=5, accuracy=(2, 81.25)))
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("version 1/5  updates accepted 0")
    assert "accuracy -" in lines[0]
    assert "accuracy  81.2% (v2)" in lines[2]
    assert "\r" not in out.getvalue()


def test_tty_output_redraws_one_line() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=True, min_interval=0.0)
    for version in (1, 2, 3):
        progress.update(ProgressState(version=version, max_version=3, discarded=version))
    progress.message("a note")
    progress.close()
    text = out.getvalue()
    assert text.count("\r\x1b[2K") >= 4
    assert text.endswith(
        "version 3/3  updates accepted 0  discarded 3  training 0  accuracy -    0.0s\n"
    )
    assert "a note\n" in text
    assert text.count("\n") == 2  # the note and the final line


def test_format_table_aligns_columns() -> None:
    table = format_table(["version", "accuracy %"], [["1", "9.19"], ["10", "97.77"]])
    assert table.splitlines() == [
        "version  accuracy %",
        "-------  ----------",
        "      1        9.19",
        "     10       97.77",
    ]
