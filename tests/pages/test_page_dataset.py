"""The Dataset page under Streamlit's AppTest: an ingest shows a spinner while every image is checked, a failed
ingest does not pass the dataset loaded before off as the new one, and the audit speaks to a domain expert
(no function names, no "mean gap")."""
from __future__ import annotations

import contextlib
import os
import re
import shutil

import streamlit

from pages import ui
from test_pages import assert_clean, open_page, shown, texts, workspace  # noqa: F401  (the workspace fixture)

PAGE = "pages/dataset.py"


def ingest_path(at, path: str):
    next(t for t in at.text_input if t.label == "Path on the server").input(path).run()
    next(b for b in at.button if b.label == "Ingest from the server").click().run()
    return at


def test_an_ingest_shows_a_spinner_and_a_failed_one_labels_the_audit_below(workspace, small_digits_dir, tmp_path,
                                                                           monkeypatch):
    said = []
    spinner = streamlit.spinner

    @contextlib.contextmanager
    def recorded(text="", *args, **kwargs):
        said.append(text)
        with spinner(text, *args, **kwargs):
            yield
    monkeypatch.setattr(streamlit, "spinner", recorded)
    at = ingest_path(open_page(PAGE), small_digits_dir)
    assert_clean(at)
    first = at.session_state[ui.DATASET]
    assert any(text.startswith("Ingesting ") and "every image" in text for text in said), said
    assert not any("loaded before" in h.value for h in at.header)

    at = ingest_path(at, str(tmp_path / "no-such-folder"))
    assert any("no-such-folder" in shown(e.value) for e in at.error)
    assert at.session_state[ui.DATASET] == first, "the dataset in use is still the first"
    assert at.header[0].value.startswith("The dataset loaded before · "), at.header[0].value
    assert any("Nothing new was loaded" in shown(i.value) for i in at.info)


def test_the_audit_names_no_function_and_says_what_the_colour_statistics_mean(workspace, small_digits_dir,
                                                                             tmp_path):
    """Given splits with a copy across them: the fix said "re-split with split_dataset(...,
    respect_given_splits=False)"; the colour statistics said "largest mean gap 0.22"."""
    data = tmp_path / "data"
    for label in ("0", "1", "2"):
        files = sorted(os.listdir(os.path.join(small_digits_dir, label)))
        for split, chosen in (("train", files[:8]), ("val", files[8:11]), ("test", files[11:14])):
            os.makedirs(data / split / label)
            for name in chosen:
                shutil.copy(os.path.join(small_digits_dir, label, name), data / split / label / name)
    first = sorted(os.listdir(data / "train" / "0"))[0]
    shutil.copy(data / "train" / "0" / first, data / "val" / "0" / "copy.png")  # the same image in train and val
    at = ingest_path(open_page(PAGE), str(data))
    assert not at.exception
    # the audit's findings, each shown as "**code**: message *Fix:* ..." (the split's own warnings are core.data.splits')
    findings = " ".join(shown(x.value) for x in (*at.info, *at.warning, *at.error) if x.value.startswith("**"))
    assert "**split leakage**" in findings, "the copy across splits is found"
    assert not re.search(r"\b[a-z]+_[a-z_]+\(", findings), "a Python call in the UI"
    assert "split_dataset" not in findings and "respect_given_splits" not in findings
    assert "mean gap" not in findings
    normalisation = next(shown(i.value) for i in at.info if "normalisation" in i.value)
    assert "Average colour of the train images" in normalisation and "pretrained on images" in normalisation
