"""Monitoring and the retraining loop, above deployment: what the served model sees (core.deploy.predlog) against
what it was trained on (the bundle's reference.npz), alerts a person can act on, new labelled data, a retrain
warm-started from the champion, and the challenger measured against the champion before any alias moves.

  reference (in core.deploy) -> windows (per-window figures) + drift (domain classifier AUC, MMD) -> alerts
  (monitor.db) <- check (one pass over a model: windows, drift, alerts; the CLI and the page call it)
  newdata (feedback + uploads -> a new dataset version) -> retrain (the trigger's rules; a warm-started run)
  -> challenger (offline and online comparison, the promotion decision)
"""
