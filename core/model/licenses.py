"""What a model's weights license lets you do with a model fine-tuned from them, in one sentence.

Permissive licenses (Apache-2.0, MIT, BSD) need nothing but attribution. Anything else gets a
warning: non-commercial and research-only terms forbid selling or deploying the model commercially,
copyleft terms reach into what you distribute, and an unknown license must be checked by a person.
"""
from __future__ import annotations

import re

PERMISSIVE = ("apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc0-1.0", "cc-by-4.0", "unlicense")
_NON_COMMERCIAL = re.compile(r"(^|[^a-z])nc([^a-z]|$)|non-?commercial|research|academic", re.IGNORECASE)
_COPYLEFT = re.compile(r"gpl|cc-by-sa|share-?alike|openrail", re.IGNORECASE)


def license_warning(license: str) -> str | None:
    """None for permissive licenses; otherwise what the license restricts and what to do."""
    name = (license or "").strip()
    if name.lower() in PERMISSIVE:
        return None
    if not name or name.lower().startswith("see ") or name.lower() in ("unknown", "other"):
        return (f"license not recorded ({name or 'blank'}): read the model card before using a model "
                "fine-tuned from these weights outside research")
    if _NON_COMMERCIAL.search(name):
        return (f"{name}: non-commercial / research use only. A model fine-tuned from these weights inherits "
                "the restriction; pick an Apache-2.0 or BSD model for commercial use")
    if _COPYLEFT.search(name):
        return (f"{name}: copyleft or use-restricted terms that carry over to what you distribute; check them "
                "before shipping the fine-tuned model")
    return f"{name}: not a license we recognise as permissive; check its terms before commercial use"
