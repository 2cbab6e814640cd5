"""9 · Monitor: a served model in production. Its figures per time window from the prediction log (volume,
latency, confidence, predicted-class shares, input sizes, accuracy on the predictions that got feedback) with the
validation reference drawn in, embedding drift against the training data, the open alerts with their reasons, the
feedback queue (flagged predictions: confirm or relabel), the retrain trigger and "retrain now", and the
challenger against the champion with promote / keep and rollback (core.monitor)."""
import streamlit as st

from pages import deploy_parts, monitor_parts, ui

ui.through_app(__file__)

st.title("9 · Monitor")
st.write("Watch a served model: how much it is asked, how fast and how sure it answers, whether its inputs still "
         "look like its training data, and how accurate it is on the predictions people corrected. When it "
         "degrades, retrain it on the new labelled images, compare the new version with the one in production, "
         "and promote it only when the evidence says it is not worse.")
manager = ui.job_manager()
tasks, root, me = manager.tasks, ui.workspace().root, ui.user()
refusal = ui.policy().training_refusal()

registry = deploy_parts.registry(root)
models = [m["name"] for m in registry.list_models()] if registry else []
if not models:
    st.info("No model is registered yet: export a run and register it on the Deploy page, then serve it. Its "
            "predictions, and the feedback on them, are what this page watches.")
    st.page_link("pages/deploy.py", label="Deploy", icon=ui.PAGES["pages/deploy.py"].icon)
    ui.stop_page()
if st.session_state.get("monitor.model") not in models:
    st.session_state["monitor.model"] = models[0]
model = st.selectbox("Model", models, key="monitor.model")
aliases = registry.aliases(model)
if monitor_parts.FLASH in st.session_state:
    st.success(st.session_state.pop(monitor_parts.FLASH))

st.subheader("Alerts")
monitor_parts.check_section(root, model)
monitor_parts.alerts_section(root, model)

st.subheader("In production")
monitor_parts.figures_section(root, model)

st.subheader("Feedback queue")
served = ui.attempt("Reading the served version", lambda: registry.resolve(model).bundle())
monitor_parts.feedback_queue(root, model, served.classes if served is not None else (), me.name)

st.subheader("Retrain")
monitor_parts.retrain_section(root, model, tasks, me.name, refusal)

st.subheader("Challenger against champion")
monitor_parts.challenger_section(root, model, aliases, tasks, me.name)
