"""The review web app: case list, case page (MRI + CAM, slice scrubber, opacity), labels saved to SQLite.

Security model (a reader study that may run on a hospital network):
- every request is authenticated: a reviewer's or the admin's token (``X-Review-Token`` header, or
  the HttpOnly SameSite=Strict cookie set when a link with ``?token=`` is first opened; that
  request is redirected to the same page without the token, so it leaves the address bar);
- every label is written under the authenticated account; a reviewer reads only their own labels,
  and nothing a reviewer can fetch names another reviewer; the admin reads all and exports;
- blinding is enforced here, not in the page: the prediction (and, when the study blinds it, the
  pain side) is released only after the reviewer's label of that case is saved, and every release
  is recorded with its time;
- request bodies are capped before they are read whole; every response, errors included, carries
  a same-origin Content-Security-Policy and ``nosniff``; validation errors never echo the body;
- case ids are looked up in the run's CAM index and never joined into a file path from user text.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kneepain.cam.compute import OVERLAY_DIR, CamInputError, read_cam_outputs, run_identity
from kneepain.cam.overlay import heat_rgba, png_bytes
from kneepain.contracts import KNEES, N_SLICES
from kneepain.review.store import (
    CATEGORIES,
    CATEGORY_LABELS,
    NOTE_MAX,
    VERSION_MAX,
    Account,
    InvalidReviewError,
    NotYetLabelledError,
    ReviewStore,
    StaleReviewError,
)

TOKEN_HEADER = "x-review-token"
TOKEN_COOKIE = "kneepain_review_token"
MAX_BODY = 64 * 1024
SHORTCUTS = {category: str(number) for number, category in enumerate(CATEGORIES, start=1)}
PACKAGE = files("kneepain.review")
NOTICE = (
    "Research reader study: the maps and predictions are a model's output; "
    "synthetic runs describe no patient."
)
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
AUTH_CACHE_SECONDS = 60.0


class ReviewIn(BaseModel):
    """A label as posted by the case page. The reviewer is the authenticated account, not this body."""

    model_config = ConfigDict(extra="forbid", strict=True)  # no "1" or true for a version

    reviewer: str | None = Field(default=None, max_length=64, description="if given, must be the account")
    lesions: list[str] = Field(max_length=len(CATEGORIES))
    note: str = Field(default="", max_length=NOTE_MAX)
    version: int = Field(ge=0, le=VERSION_MAX, description="the version this save is based on (0 at first)")


class SecurityHeaders:
    """Adds the security headers to every response that passes through (4xx included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                if b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413 before they are read whole.

    A declared Content-Length over the cap is refused without reading a byte; otherwise the body
    is read here, counting streamed (chunked) bytes, and at most ``max_bytes`` are ever held before
    the request is refused or replayed to the app.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self.refuse(send)
            return
        if declared is None and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await self.refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"request body over {self.max_bytes} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class ReviewContext:
    """What the app serves: the run's CAM outputs, its case ids, its review store and study protocol."""

    def __init__(self, run_dir: Path, db_path: Path) -> None:
        self.run_dir = run_dir.resolve()
        self.outputs = read_cam_outputs(self.run_dir)
        self.run_id = run_identity(self.run_dir)
        cam_run = self.outputs.meta.get("run_id")
        if cam_run and cam_run != self.run_id:
            raise CamInputError(
                f"{self.run_dir / 'cam'}: CAMs were computed for run {cam_run!r}, not {self.run_id!r}"
            )
        self.store = ReviewStore(db_path, self.run_id)
        self.protocol = self.store.protocol()
        self.study_key = self.store.study_key()
        self.case_ids: list[str] = self.outputs.index["subject_id"].tolist()
        self.position = {case_id: i for i, case_id in enumerate(self.case_ids)}
        self._scales: dict[str, tuple[float, float]] = {}
        self._accounts: dict[bytes, tuple[Account, float]] = {}

    def _cache_key(self, token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "replace")).digest()

    def cached_account(self, token: str) -> Account | None:
        """The token's account if it was verified within the last minute (no scrypt)."""
        cached = self._accounts.get(self._cache_key(token))
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        return None

    def authenticate(self, token: str) -> Account | None:
        """The token's account; verified once a minute per token (scrypt is slow by design)."""
        if not token:
            return None
        cached = self.cached_account(token)
        if cached is not None:
            return cached  # not re-stamped: a reset secret stops working within the minute
        account = self.store.authenticate(token)
        if account is not None:
            self._accounts[self._cache_key(token)] = (account, time.monotonic() + AUTH_CACHE_SECONDS)
        return account

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

    def side_blinded(self, account: Account, case_id: str) -> bool:
        """Whether this account may not yet know which knee of the case is the painful one."""
        if account.is_admin or self.protocol.pain_side == "shown":
            return False
        return not self.store.revealed(case_id, account.name)

    def knee_a(self, case_id: str) -> str:
        """Which knee is shown as "knee A" when the pain side is blinded: random per case, fixed per study."""
        digest = hmac.new(self.study_key, case_id.encode(), hashlib.sha256).digest()
        return KNEES[digest[0] & 1]

    def knee(self, case_id: str, side: str, account: Account) -> int:
        """Index into KNEES of a slice request's side: left/right, or a/b under a blinded pain side."""
        if side in ("a", "b"):
            first = self.knee_a(case_id)
            return KNEES.index(first) if side == "a" else 1 - KNEES.index(first)
        if self.side_blinded(account, case_id):
            raise HTTPException(403, "the pain side is blinded in this study until your label is saved")
        return KNEES.index(side)

    def case_info(self, position: int, account: Account) -> dict[str, Any]:
        """The facts the case page needs: never the prediction, and no pain side while that is blinded."""
        case_id = self.case_ids[position]
        row = self.outputs.index.iloc[position]
        painful = str(row["painful_side"])
        other = KNEES[1 - KNEES.index(painful)]
        if self.protocol.pain_side == "after_label" and not account.is_admin:
            knees = [{"key": "a", "caption": "Knee A"}, {"key": "b", "caption": "Knee B"}]
        else:
            knees = [
                {"key": painful, "caption": f"Painful knee ({painful})"},
                {"key": other, "caption": f"Other knee ({other})"},
            ]
        return {
            "case_id": case_id,
            "knees": knees,
            "best_slice": int(row["best_slice"]),
            "n_slices": N_SLICES,
            "position": position + 1,
            "count": len(self.case_ids),
            "previous": self.case_ids[position - 1] if position > 0 else None,
            "next": self.case_ids[position + 1] if position + 1 < len(self.case_ids) else None,
        }

    def reveal(self, position: int, account: Account) -> dict[str, Any]:
        """What the protocol releases after labelling, recorded per item for a reviewer (409 before it)."""
        case_id = self.case_ids[position]
        row = self.outputs.index.iloc[position]
        released: dict[str, Any] = {}
        show_prediction = account.is_admin or self.protocol.prediction == "after_label"
        blinded_side = self.protocol.pain_side == "after_label" and not account.is_admin
        if not show_prediction and not blinded_side:
            raise HTTPException(403, "this study does not show the model's prediction to reviewers")
        items = (["prediction"] if show_prediction else []) + (["pain_side"] if blinded_side else [])
        if not account.is_admin:
            try:
                for item in items:
                    released["revealed_at"] = self.store.record_reveal(case_id, account.name, item)
            except NotYetLabelledError as error:
                raise HTTPException(409, str(error)) from error
        if show_prediction:
            released.update(
                prob_right=float(row["prob_right"]),
                predicted_side=str(row["predicted_side"]),
                correct=bool(row["correct"]),
            )
        if blinded_side:
            released.update(painful_side=str(row["painful_side"]), knee_a=self.knee_a(case_id))
        return released


def account_of(request: Request) -> Account:
    """The authenticated account (set by the guard middleware)."""
    return request.state.account


def reviewer_of(request: Request) -> Account:
    """The authenticated account, which must be a reviewer (the admin labels nothing)."""
    account = account_of(request)
    if account.is_admin:
        raise HTTPException(403, "the admin account reads and exports; labels are recorded by reviewers")
    return account


def admin_of(request: Request) -> Account:
    account = account_of(request)
    if not account.is_admin:
        raise HTTPException(403, "admin only")
    return account


def record_json(record: Any) -> dict[str, Any]:
    if record is None:
        return {"lesions": [], "note": "", "version": 0, "saved_at": None}
    return {
        "lesions": list(record.lesions),
        "note": record.note,
        "version": record.version,
        "saved_at": record.saved_at,
    }


def create_app(
    run_dir: str | Path,
    db_path: str | Path,
    allowed_hosts: list[str] | None = None,
    max_body: int = MAX_BODY,
) -> FastAPI:
    """Build the review app for one run and one database (another run's database is an error).

    ``allowed_hosts`` limits the Host header (against DNS rebinding of a loopback server);
    ``max_body`` caps request bodies (bytes).
    """
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    context = ReviewContext(Path(run_dir), Path(db_path))
    app = FastAPI(title="kneepain review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.context = context
    templates = Jinja2Templates(directory=str(PACKAGE / "templates"))
    app.mount("/static", StaticFiles(directory=str(PACKAGE / "static")), name="static")

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        """Authenticate every request; a ``?token=`` link sets the cookie and redirects to a clean URL."""
        if request.url.path.startswith("/static/"):
            return await call_next(request)
        if request.url.path == "/signout":  # a shared reading-room computer: the next reader signs in anew
            signed_out = RedirectResponse("/", status_code=303)
            signed_out.delete_cookie(TOKEN_COOKIE)
            return signed_out
        from_query = request.query_params.get("token")
        offered = request.headers.get(TOKEN_HEADER) or from_query or request.cookies.get(TOKEN_COOKIE) or ""
        account = context.cached_account(offered) if offered else None
        if account is None and offered:  # scrypt off the event loop: it would stall every other request
            account = await run_in_threadpool(context.authenticate, offered)
        if account is None:
            if request.method == "GET" and not request.url.path.startswith("/api/"):
                page = templates.TemplateResponse(
                    request, "signin.html", {"notice": NOTICE, "failed": bool(offered)}, status_code=401
                )
                page.delete_cookie(TOKEN_COOKIE)
                return page
            return JSONResponse({"detail": "sign in: give your reviewer secret (X-Review-Token)"}, 401)
        if from_query is not None:
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            clean = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            redirect = RedirectResponse(clean, status_code=303)
            redirect.set_cookie(
                TOKEN_COOKIE,
                offered,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
            return redirect
        request.state.account = account
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        """422 naming the field and the rule, never echoing the submitted value."""
        detail = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in error.errors()
        ]
        return JSONResponse({"detail": detail}, 422)

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        """500 with the security headers (this handler runs outside the app's middleware)."""
        return JSONResponse(
            {"detail": "internal error (see the server's log)"}, 500, headers=SECURITY_HEADERS
        )

    # added last = outermost: headers on everything, bodies capped before anything reads them
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.add_middleware(BodyLimit, max_bytes=max_body)
    app.add_middleware(SecurityHeaders)

    def page(request: Request, name: str, values: dict[str, Any]) -> Response:
        account = account_of(request)
        common = {
            "run_id": context.run_id,
            "account": account,
            "notice": NOTICE,
            "protocol": context.protocol,
        }
        return templates.TemplateResponse(request, name, {**common, **values})

    @app.get("/", response_class=HTMLResponse)
    def case_list(request: Request) -> Response:
        account = account_of(request)
        if account.is_admin:
            reviewed = context.store.reviewers_by_case()
            cases = [{"case_id": c, "status": ", ".join(reviewed.get(c, []))} for c in context.case_ids]
        else:
            mine = context.store.reviewer_status(account.name)
            cases = []
            for c in context.case_ids:
                version, revealed = mine.get(c, (0, False))
                status = "" if not version else f"saved (v{version})" + (", revealed" if revealed else "")
                cases.append({"case_id": c, "status": status})
        done = sum(1 for c in cases if c["status"])
        return page(request, "cases.html", {"cases": cases, "done": done})

    @app.get("/cases/{case_id}", response_class=HTMLResponse)
    def case_page(request: Request, case_id: str) -> Response:
        account = account_of(request)
        position = context.case(case_id)
        info = context.case_info(position, account)
        categories = [{"key": c, "label": CATEGORY_LABELS[c], "shortcut": SHORTCUTS[c]} for c in CATEGORIES]
        revealed = account.is_admin or context.store.revealed(case_id, account.name)
        data = {
            **info,
            "categories": categories,
            "reviewer": account.name,
            "admin": account.is_admin,
            "revealed": revealed,
            "protocol": {"prediction": context.protocol.prediction, "pain_side": context.protocol.pain_side},
        }
        return page(request, "case.html", {"case": info, "data": data, "categories": categories})

    @app.get("/api/cases")
    def list_cases(account: Account = Depends(account_of)) -> list[dict[str, Any]]:
        if account.is_admin:
            reviewed = context.store.reviewers_by_case()
            return [{"case_id": c, "reviewers": reviewed.get(c, [])} for c in context.case_ids]
        mine = context.store.reviewer_status(account.name)
        return [
            {"case_id": c, "version": mine.get(c, (0, False))[0], "revealed": mine.get(c, (0, False))[1]}
            for c in context.case_ids
        ]

    @app.get("/api/cases/{case_id}")
    def case_info(case_id: str, account: Account = Depends(account_of)) -> dict[str, Any]:
        return context.case_info(context.case(case_id), account)

    @app.get("/api/cases/{case_id}/prediction")
    def prediction(case_id: str, account: Account = Depends(account_of)) -> dict[str, Any]:
        """What the study releases after labelling (the prediction; the pain side when blinded)."""
        return context.reveal(context.case(case_id), account)

    @app.get("/api/cases/{case_id}/review")
    def get_review(case_id: str, account: Account = Depends(reviewer_of)) -> dict[str, Any]:
        """The signed-in reviewer's own record of the case (nobody else's)."""
        context.case(case_id)
        return record_json(context.store.get(case_id, account.name))

    @app.post("/api/cases/{case_id}/review")
    def save_review(
        case_id: str, review: ReviewIn, account: Account = Depends(reviewer_of)
    ) -> dict[str, Any]:
        context.case(case_id)
        if review.reviewer is not None and review.reviewer != account.name:
            raise HTTPException(
                403, "you are signed in as another reviewer; labels are saved under your own name"
            )
        try:
            record = context.store.save(case_id, account.name, review.lesions, review.note, review.version)
        except InvalidReviewError as error:
            raise HTTPException(422, str(error)) from error
        except StaleReviewError as error:
            raise HTTPException(409, str(error)) from error
        return record_json(record)

    @app.get("/api/admin/reviews")
    def all_reviews(account: Account = Depends(admin_of)) -> list[dict[str, Any]]:
        """Every reviewer's current records (admin only)."""
        table = context.store.table()
        return json.loads(table.to_json(orient="records"))

    @app.get("/api/admin/export")
    def export_summary(account: Account = Depends(admin_of)) -> dict[str, Any]:
        """Blinding per reviewer and kappa from labels committed blind (admin only; the CLI writes files)."""
        from kneepain.review.export import study_summary

        blinding, kappas = study_summary(context.store)
        return {
            "blinding": json.loads(blinding.to_json(orient="records")),
            "agreement_blind": json.loads(kappas.to_json(orient="records")),
        }

    @app.get("/cases/{case_id}/slices/{side}/{k}/{layer}.png")
    def slice_image(
        case_id: str,
        side: Literal["left", "right", "a", "b"],
        layer: Literal["mri", "cam"],
        k: int = PathParam(ge=0, lt=N_SLICES),
        account: Account = Depends(account_of),
    ) -> Response:
        """One slice of one knee: the MRI in grey, or the CAM heat map (opaque; the page sets opacity)."""
        position = context.case(case_id)
        knee = context.knee(case_id, side, account)
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
    def overlay_figure(
        case_id: str, side: Literal["left", "right"], account: Account = Depends(account_of)
    ) -> Response:
        """The stage's Figure-3 style PNG of one knee (built from the validated id, inside the run folder)."""
        context.case(case_id)
        if context.side_blinded(account, case_id):
            raise HTTPException(403, "the pain side is blinded in this study until your label is saved")
        overlays = (context.run_dir / "cam" / OVERLAY_DIR).resolve()
        path = (overlays / f"{case_id}_{side}.png").resolve()
        if not path.is_relative_to(context.run_dir) or not path.is_file():
            raise HTTPException(404, f"no overlay figure for case {case_id} ({side})")
        return FileResponse(path, media_type="image/png")

    return app
