"""2 · Dataset: load images (demo, archive, CSV + images, server folder, stored), then the audit, the split,
examples per class, duplicate and leakage pairs side by side, and the augmentation preview."""
import os

import pandas as pd
import streamlit as st

from core.data.ingest import demo_dataset, ingest, resolve_dataset
from core.data.store import list_datasets
from core.data.types import ARCHIVE_SUFFIXES, IMAGE_SUFFIXES
from core.model import ingest_csv_upload
from core.runs import dataset_names
from pages import charts, ui

ui.through_app(__file__)

st.title("2 · Your images")
st.write("Give one folder per class (`cats/…`, `dogs/…`), optionally inside `train/`, `val/`, `test/` folders; "
         "or a CSV with `path,label` columns. Every image is checked, hidden files are skipped, and the data "
         "is stored once in the workspace.")
root = ui.workspace().root
loaded = None
tried = False  # an ingest was asked for in this run: if it fails, the audit below is not of what was asked for


def load(action: str, fn, *args, **kwargs):
    """One ingest, under a spinner: every image is opened, checked and copied (seconds to minutes)."""
    with st.spinner(f"{action}: checking and storing every image…"):
        return ui.attempt(action, fn, *args, **kwargs)


demo, archive, csv_tab, folder, stored = st.tabs(["Demo data", "Upload an archive", "CSV + images",
                                                  "Folder on the server", "Stored datasets"])
with demo:
    st.write("Handwritten digits from scikit-learn: 1,797 small greyscale images in 10 classes. Good for a "
             "first run: it trains in a minute or two on a CPU.")
    if st.button("Load the demo dataset", type="primary"):
        tried, loaded = True, load("Loading the demo dataset", demo_dataset, root)
with archive:
    upload = st.file_uploader("A .zip or .tar.gz of class folders (or train/val/test folders, or a CSV with "
                              "its images)", type=[s.lstrip(".") for s in ARCHIVE_SUFFIXES] + ["gz"])
    if st.button("Ingest the archive", disabled=upload is None):
        tried, loaded = True, load(f"Ingesting {upload.name}", ingest, upload, root, filename=upload.name)
with csv_tab:
    st.caption("The CSV's `path` column names the uploaded files (no folders); optional `split` "
               "(train/val/test) and `group` (e.g. a patient id, kept within one split) columns.")
    csv_file = st.file_uploader("CSV file (path,label[,split][,group])", type=["csv"])
    images = st.file_uploader("Its images", type=[s.lstrip(".") for s in IMAGE_SUFFIXES], accept_multiple_files=True)
    if st.button("Ingest the CSV and images", disabled=csv_file is None or not images):
        tried, loaded = True, load(f"Ingesting {csv_file.name}", ingest_csv_upload, csv_file, csv_file.name,
                                   [(f.name, f) for f in images], root)
with folder:
    workspace = ui.workspace()
    if workspace.data_roots is not None:
        st.caption("This server reads data only from: " + (", ".join(f"`{r}`" for r in workspace.data_roots)
                                                            or "nowhere (server paths are turned off)") + ".")
    path = st.text_input("Path on the server", placeholder="/data/my-images (a folder, .zip, .tar.gz or .csv)")
    if st.button("Ingest from the server", disabled=not path.strip()):
        tried, loaded = True, load(f"Ingesting {path}", lambda: resolve_dataset(workspace.server_path(path), root))
with stored:
    names = dataset_names(root)
    if names:
        mine = sorted(ui.visible_datasets(list_datasets(root)), key=lambda i: (names.get(i, i).lower(), i))
        current = st.session_state.get(ui.DATASET)
        chosen = st.selectbox("Datasets in this workspace", mine, index=mine.index(current) if current in mine else 0,
                              format_func=lambda i: f"{names.get(i, i)} ({i})")
        if st.button("Use this dataset"):
            st.session_state[ui.DATASET] = chosen
    else:
        st.caption("None yet.")
if loaded is not None:
    ui.attempt("Recording the dataset's owner", ui.dataset_owners().record, loaded.dataset_id, ui.user().name)
    st.session_state[ui.DATASET] = loaded.dataset_id
    if loaded.skipped:
        st.warning(f"{len(loaded.skipped)} files were skipped; the audit below lists why.")

overview = ui.current_overview()
if overview is None:
    st.info("Load a dataset above to see its audit.")
    ui.stop_page()

report = overview.report
before = tried and loaded is None  # the ingest failed: what follows is still the dataset loaded before it
if before:
    st.info(f"Nothing new was loaded (the error above says why). Below: the dataset loaded before, "
            f"**{ui.md_escape(overview.name)}**.")
st.header(("The dataset loaded before · " if before else "")
          + f"{ui.md_escape(overview.name)}: {report.num_images:,} images, {len(report.class_counts)} classes")
sizes = overview.split_sizes()
cols = st.columns(6)
cols[0].metric("train", sizes.get("train", 0))
cols[1].metric("val", sizes.get("val", 0))
cols[2].metric("test", sizes.get("test", 0))
cols[3].metric("imbalance", f"{report.imbalance_ratio:g} : 1", help="largest class / smallest class")
cols[4].metric("median size", f"{report.sizes.median_width:g}×{report.sizes.median_height:g}")
cols[5].metric("errors / warnings", f"{report.count('error')} / {report.count('warning')}")

st.subheader("Audit")
if report.blocks_training:
    st.error("Training is blocked by the errors below: fix the data and load it again.")
show = {"error": st.error, "warning": st.warning, "info": st.info}
for finding in report.findings:  # messages and fixes quote file and class names: shown as text
    show[finding.severity](f"**{finding.code.replace('_', ' ')}**: {ui.md_escape(finding.message)}"
                           + (f"\n\n*Fix:* {ui.md_escape(finding.fix)}" if finding.fix else ""))
    if finding.files and not finding.pairs:
        with st.expander(f"{len(finding.files)} file(s)"):
            st.code("\n".join(finding.files[:50]) + ("\n…" if len(finding.files) > 50 else ""), language=None)

left, right = st.columns([3, 2])
left.plotly_chart(charts.class_counts_figure(overview.split_counts), key="class_counts")
with right:
    st.markdown("**Split sizes** (stratified, seeded; duplicates kept within one split)")
    st.dataframe(pd.DataFrame(overview.split_counts).fillna(0).astype(int), height=300)
    if overview.split_error:
        st.error(f"**The data cannot be split as configured.** {ui.md_escape(overview.split_error)}")
    for warning in overview.manifest.warnings if overview.manifest else ():
        st.warning(ui.md_escape(warning))

st.subheader("Examples per class")
labels = list(overview.examples)
shown = st.multiselect("Classes to show", labels, default=labels[:10]) if len(labels) > 10 else labels
for label in shown:
    st.markdown(f"**{ui.md_escape(label)}** · {report.class_counts.get(label, 0)} images")
    st.image(list(overview.examples[label]), width=72)

if overview.pairs:
    st.subheader("Duplicates and leaks, side by side")
    st.caption("Identical or near-identical images: across splits they inflate the scores; with different "
               "labels one of them is probably wrong.")
    for pair in overview.pairs:
        st.markdown(f"**{pair.code.replace('_', ' ')}** ({pair.severity})")
        a, b, _ = st.columns([1, 1, 2])
        a.image(pair.a, caption=ui.md_escape(f"{pair.label_a} · {pair.split_a} · {os.path.basename(pair.a)}"),
                width=120)
        b.image(pair.b, caption=ui.md_escape(f"{pair.label_b} · {pair.split_b} · {os.path.basename(pair.b)}"),
                width=120)

found = [g for g in (overview.manifest.grouping if overview.manifest else ()) if g.get("groups")]
if found or overview.related or ui.current_config().group_by == "none":
    st.subheader("Related images, kept in one split")
    st.caption("Different pictures of one thing (views of an object, one patient, one part). If training sees one "
               "and validation another, validation scores memory, not generalisation. A CSV 'group' column always "
               "wins; otherwise they are inferred from file names and from how alike the images look.")
    for g in found:
        st.markdown(f"**{g['images']:,} images in {g['groups']:,} groups** "
                    f"({'file names' if g['source'] == 'names' else 'image similarity' if g['source'] == 'embeddings' else 'your groups'}): "
                    f"{ui.md_escape(g['rule'])}.")
    for example in overview.related[:6]:
        st.image(list(example.paths)[:6], width=96,
                 caption=[ui.md_escape(f"{example.label} · {example.split} · {os.path.basename(p)}")
                          for p in example.paths[:6]])
    grouped = ui.current_config().group_by != "none"
    choice = st.toggle("Split by these groups", value=grouped,
                       help="On: each group stays within one split (recommended). Off: only exact and near "
                            "duplicates and the CSV's own groups are kept together.")
    if choice != grouped:
        ui.update_config(group_by="auto" if choice else "none")
        st.rerun()

st.subheader("Augmentation preview")
st.caption("Random crops, flips and colour changes the training will apply, so the model learns the class rather "
           "than the exact pixels. Change them on the Configure page.")
ui.show_augmentation_preview(ui.current_config())
st.page_link("pages/configure.py", label="Next: check the settings", icon=":material/arrow_forward:")
