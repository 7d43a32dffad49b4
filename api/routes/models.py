"""Bandit model versions for analysts (`GET /v1/models`, the same JSON as `copyloop model list
--json`). Changing them (rollback, import) is an operator's act on the command line."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from api.auth import require
from api.deps import ReadsDep
from api.errors import AUTH_RESPONSES
from core.ledger.model_versions import list_versions

router = APIRouter(
    tags=["models"], dependencies=[Depends(require("analyst"))], responses=AUTH_RESPONSES
)


@router.get("/v1/models", response_model=dict[str, Any])
def models(sessions: ReadsDep) -> dict[str, Any]:
    """Model versions, newest first: version, created_at, source (learned, rollback, import,
    restart) and origin, last_seq and the last learned decision, when it served (served_from,
    served_until; null: now), current, storage (database or file) and size in bytes."""
    return {"versions": [v.to_json() for v in list_versions(sessions)]}
