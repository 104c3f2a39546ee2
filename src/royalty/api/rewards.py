"""HTTP routes: rewards."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["rewards"])
