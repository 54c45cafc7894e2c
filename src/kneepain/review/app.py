"""The review web app: case list, case page (MRI + CAM, slice scrubber, opacity), reviews saved to SQLite.

Security model (a local tool that may be bound to a hospital network):
- case ids are looked up in the run's CAM index; they are never joined into a file path;
- images are rendered from the run's arrays; the only files served are the package's own static
  files and the run's overlay PNGs, whose paths are built from a validated id and checked to lie
  inside the run folder;
- with a token every request needs it (header ``X-Review-Token``, or the cookie set after opening
  a link with ``?token=``); the CLI refuses a non-loopback address without one;
- the model's prediction is only sent when the reviewer asks for it (blinded review by default).
"""

from __future__ import annotations

import hmac
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field

from kneepain.cam.compute import OVERLAY_DIR, CamInputError, read_cam_outputs, run_identity
from kneepain.cam.overlay import heat_rgba, png_bytes
from kneepain.contracts import KNEES, N_SLICES
from kneepain.review.store import (
    CATEGORIES,
    CATEGORY_LABELS,
    NOTE_MAX,
    InvalidReviewError,
    ReviewStore,
    StaleReviewError,
)

TOKEN_HEADER = "x-review-token"
TOKEN_COOKIE = "kneepain_review_token"
SHORTCUTS = {category: str(number) for number, category in enumerate(CATEGORIES, start=1)}
PACKAGE = files("kneepain.review")


class ReviewIn(BaseModel):
    """A review as posted by the case page."""

    model_config = ConfigDict(extra="forbid")

    reviewer: str = Field(min_length=1, max_length=64)
    lesions: list[str] = Field(max_length=len(CATEGORIES))
    note: str = Field(default="", max_length=NOTE_MAX)
    version: int = Field(ge=0, description="the version this save is based on (0 for a first save)")


class ReviewContext:
    """What the app serves: the run's CAM outputs, its case ids, and its review store."""

    def __init__(self, run_dir: Path, db_path: Path, reviewer: str) -> None:
        self.run_dir = run_dir.resolve()
        self.outputs = read_cam_outputs(self.run_dir)
        self.run_id = run_identity(self.run_dir)
        cam_run = self.outputs.meta.get("run_id")
        if cam_run and cam_run != self.run_id:
            raise CamInputError(
                f"{self.run_dir / 'cam'}: CAMs were computed for run {cam_run!r}, not {self.run_id!r}"
            )
        self.store = ReviewStore(db_path, self.run_id)
        self.reviewer = reviewer
        self.case_ids: list[str] = self.outputs.index["subject_id"].tolist()
        self.position = {case_id: i for i, case_id in enumerate(self.case_ids)}
        self._scales: dict[str, tuple[float, float]] = {}

    def case(self, case_id: str) -> int:
        """Row of a case in the CAM index; 404 for anything that is not one of the run's case ids."""
        position = self.position.get(case_id)
        if position is None:
            raise HTTPException(404, f"unknown case id {case_id[:40]!r}")
        return position

    def scale(self, position: int) -> tuple[float, float]:
        """The subject's CAM colour scale: min and max over both knees and all slices."""
        case_id = self.case_ids[position]
        if case_id not in self._scales:
            maps = np.asarray(self.outputs.cams[position])
            self._scales[case_id] = (float(maps.min()), float(maps.max()))
        return self._scales[case_id]

    def case_info(self, position: int) -> dict[str, Any]:
        """The blinded facts the case page needs (no prediction)."""
        row = self.outputs.index.iloc[position]
        painful = str(row["painful_side"])
        return {
            "case_id": self.case_ids[position],
            "painful_side": painful,
            "other_side": KNEES[1 - KNEES.index(painful)],
            "best_slice": int(row["best_slice"]),
            "n_slices": N_SLICES,
            "position": position + 1,
            "count": len(self.case_ids),
            "previous": self.case_ids[position - 1] if position > 0 else None,
            "next": self.case_ids[position + 1] if position + 1 < len(self.case_ids) else None,
        }


def create_app(
    run_dir: str | Path,
    db_path: str | Path,
    reviewer: str = "",
    token: str | None = None,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """Build the review app for one run and one database (another run's database is an error).

    ``allowed_hosts`` limits the Host header (against DNS rebinding of a loopback server).
    """
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    context = ReviewContext(Path(run_dir), Path(db_path), reviewer)
    app = FastAPI(title="kneepain review", docs_url=None, redoc_url=None, openapi_url=None)
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.state.context = context
    templates = Jinja2Templates(directory=str(PACKAGE / "templates"))
    app.mount("/static", StaticFiles(directory=str(PACKAGE / "static")), name="static")

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        """Token check (when one is set) and headers that keep pages self-contained."""
        from_query = request.query_params.get("token")
        if token is not None:
            offered = (
                request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE) or from_query or ""
            )
            if not hmac.compare_digest(offered.encode(), token.encode()):
                return JSONResponse(
                    {"detail": "access token required (open the link printed by the server)"}, 401
                )
        response = await call_next(request)
        if token is not None and from_query:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        response.headers["Content-Security-Policy"] = "default-src 'self'; frame-ancestors 'none'"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = response.headers.get("Cache-Control", "no-store")
        return response

    @app.get("/", response_class=HTMLResponse)
    def case_list(request: Request) -> Response:
        reviewed = context.store.reviewers_by_case()
        cases = [{"case_id": c, "reviewers": ", ".join(reviewed.get(c, []))} for c in context.case_ids]
        return templates.TemplateResponse(
            request, "cases.html", {"cases": cases, "run_id": context.run_id, "reviewer": context.reviewer}
        )

    @app.get("/cases/{case_id}", response_class=HTMLResponse)
    def case_page(request: Request, case_id: str) -> Response:
        info = context.case_info(context.case(case_id))
        categories = [{"key": c, "label": CATEGORY_LABELS[c], "shortcut": SHORTCUTS[c]} for c in CATEGORIES]
        data = {**info, "categories": categories, "reviewer": context.reviewer}
        return templates.TemplateResponse(
            request,
            "case.html",
            {"case": info, "data": data, "categories": categories, "run_id": context.run_id},
        )

    @app.get("/api/cases")
    def list_cases() -> list[dict[str, Any]]:
        reviewed = context.store.reviewers_by_case()
        return [{"case_id": c, "reviewers": reviewed.get(c, [])} for c in context.case_ids]

    @app.get("/api/cases/{case_id}")
    def case_info(case_id: str) -> dict[str, Any]:
        return context.case_info(context.case(case_id))

    @app.get("/api/cases/{case_id}/prediction")
    def prediction(case_id: str) -> dict[str, Any]:
        """The model's prediction: only fetched when the reviewer unblinds the case."""
        row = context.outputs.index.iloc[context.case(case_id)]
        return {
            "prob_right": float(row["prob_right"]),
            "predicted_side": str(row["predicted_side"]),
            "correct": bool(row["correct"]),
        }

    @app.get("/api/cases/{case_id}/review")
    def get_review(case_id: str, reviewer: str) -> dict[str, Any]:
        context.case(case_id)
        record = context.store.get(case_id, reviewer)
        if record is None:
            return {"lesions": [], "note": "", "version": 0, "saved_at": None}
        return {
            "lesions": list(record.lesions),
            "note": record.note,
            "version": record.version,
            "saved_at": record.saved_at,
        }

    @app.post("/api/cases/{case_id}/review")
    def save_review(case_id: str, review: ReviewIn) -> dict[str, Any]:
        context.case(case_id)
        try:
            record = context.store.save(case_id, review.reviewer, review.lesions, review.note, review.version)
        except InvalidReviewError as error:
            raise HTTPException(422, str(error)) from error
        except StaleReviewError as error:
            raise HTTPException(409, str(error)) from error
        return {
            "lesions": list(record.lesions),
            "note": record.note,
            "version": record.version,
            "saved_at": record.saved_at,
        }

    @app.get("/cases/{case_id}/slices/{side}/{k}/{layer}.png")
    def slice_image(
        case_id: str,
        side: Literal["left", "right"],
        layer: Literal["mri", "cam"],
        k: int = PathParam(ge=0, lt=N_SLICES),
    ) -> Response:
        """One slice of one knee: the MRI in grey, or the CAM heat map (opaque; the page sets opacity)."""
        position = context.case(case_id)
        knee = KNEES.index(side)
        mri = np.asarray(
            context.outputs.cache[int(context.outputs.index.iloc[position]["cache_row"]), knee, k]
        )
        if layer == "mri":
            image = mri
        else:
            low, high = context.scale(position)
            image = heat_rgba(np.asarray(context.outputs.cams[position, knee, k]), low, high, mri.shape)
        return Response(
            png_bytes(image), media_type="image/png", headers={"Cache-Control": "private, max-age=600"}
        )

    @app.get("/cases/{case_id}/overlay/{side}.png")
    def overlay_figure(case_id: str, side: Literal["left", "right"]) -> Response:
        """The stage's Figure-3 style PNG of one knee (built from the validated id, inside the run folder)."""
        context.case(case_id)
        overlays = (context.run_dir / "cam" / OVERLAY_DIR).resolve()
        path = (overlays / f"{case_id}_{side}.png").resolve()
        if not path.is_relative_to(context.run_dir) or not path.is_file():
            raise HTTPException(404, f"no overlay figure for case {case_id} ({side})")
        return FileResponse(path, media_type="image/png")

    return app
