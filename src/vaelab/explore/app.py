"""The explorer's web app (Starlette): the page, its two assets, and a small JSON API.

    GET  /                    the page (static/index.html; explore.js and explore.css beside it)
    GET  /api/info            the run, its capabilities, the map, the latent dimensions, anomalies
    GET  /api/item/{i}        image i of the map, its reconstruction, code and point
    POST /api/decode          {"code": [D numbers] | "point": [x, y], "cls": c}  -> picture
    POST /api/interpolate     {"a": [D], "b": [D], "t": [T fractions], "mode": ..., "cls": c}
    POST /api/sample          {"sampler": name, "n": 16, "cls": c | null, "seed": 0}
    POST /api/upload          the image file itself as the body (Content-Type image/...)

The app serves its one run and three files read from the package when it is made: no
path a browser sends is ever opened. JSON requests must say so in their Content-Type
and uploads must be images, which keeps other web sites' forms from posting here
(neither is a type a cross-site form may send without the browser asking first); with
``allowed_hosts`` the Host header is checked too (against DNS rebinding). Every refusal
is JSON ``{"error": "one line"}`` with a 4xx status.
"""

from __future__ import annotations

from importlib import resources

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vaelab.errors import VaelabError
from vaelab.explore import checks
from vaelab.explore.checks import BadRequest
from vaelab.explore.explorer import Explorer
from vaelab.explore.images import MAX_UPLOAD_BYTES

ASSETS = {"index.html": "text/html; charset=utf-8", "explore.js": "text/javascript; charset=utf-8",
          "explore.css": "text/css; charset=utf-8"}
# The browser enforces what the page may load: only this server and data: images, so a
# stray reference to a CDN fails loudly in the browser test instead of working online only.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",  # another run may be served on the same port next time
}
UPLOAD_TYPES = ("image/", "application/octet-stream")


def read_assets() -> dict[str, bytes]:
    folder = resources.files("vaelab.explore") / "static"
    return {name: (folder / name).read_bytes() for name in ASSETS}


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"the request is {int(declared) / 2**20:.1f} MB; the limit is {limit / 2**20:g} MB", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"the request is larger than the limit of {limit / 2**20:g} MB", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _json(request: Request) -> dict:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise BadRequest("send the request as JSON (Content-Type: application/json)", 415)
    return checks.parse_json(await _body(request, checks.MAX_JSON_BYTES))


def make_app(run, split: str | None = None, n: int = 5000, projection: str = "pca", seed: int = 0,
             allowed_hosts: list[str] | None = None) -> Starlette:
    """The Starlette app exploring ``run`` (a ``vaelab.api.Run``, or an ``Explorer`` made
    already). ``allowed_hosts``: the Host names to answer (None answers any)."""
    ex = run if isinstance(run, Explorer) else Explorer(run, split=split, n=n, projection=projection, seed=seed)
    assets = read_assets()
    dim = int(ex.codes.shape[1]) if ex.continuous else 0

    def asset(name: str):
        async def endpoint(request: Request) -> Response:
            return Response(assets[name], media_type=ASSETS[name], headers=HEADERS)
        return endpoint

    def answer(result: dict) -> JSONResponse:
        return JSONResponse(result, headers=HEADERS)

    info_cache: dict = {}

    async def info(request: Request) -> JSONResponse:
        if "info" not in info_cache:
            info_cache["info"] = await run_in_threadpool(ex.info)
        return answer(info_cache["info"])

    async def item(request: Request) -> JSONResponse:
        return answer(await run_in_threadpool(ex.item, request.path_params["index"]))

    async def decode(request: Request) -> JSONResponse:
        body = await _json(request)
        checks.only(body, {"code", "point", "cls"})
        ex.need_continuous("decoding a code")
        cls = ex.check_class(body.get("cls"))
        if ("code" in body) == ("point" in body):
            raise BadRequest(f"give either code (a list of {dim} numbers) or point (a spot [x, y] on the map)")
        if "code" in body:
            return answer(await run_in_threadpool(ex.decode, checks.vector(body["code"], "code", dim), cls))
        return answer(await run_in_threadpool(ex.decode_point, checks.vector(body["point"], "point", 2), cls))

    async def interpolate(request: Request) -> JSONResponse:
        body = await _json(request)
        checks.only(body, {"a", "b", "t", "mode", "cls"})
        ex.need_continuous("an interpolation")
        for end in ("a", "b"):
            if end not in body:
                raise BadRequest(f"give both ends of the path: a and b (lists of {dim} numbers)")
        a, b = checks.vector(body["a"], "a", dim), checks.vector(body["b"], "b", dim)
        ts = checks.numbers(body.get("t", [i / 9 for i in range(10)]), "t", 0.0, 1.0)
        mode = checks.choice(body.get("mode", "linear"), "mode", ("linear", "spherical"))
        return answer(await run_in_threadpool(ex.interpolate, a, b, ts, mode, ex.check_class(body.get("cls"))))

    async def sample(request: Request) -> JSONResponse:
        body = await _json(request)
        checks.only(body, {"sampler", "n", "cls", "seed"})
        if "sampler" not in body:
            raise BadRequest("give the sampler's name (sampler)")
        name = checks.choice(body["sampler"], "sampler", [s["name"] for s in ex.supported_samplers()] or ["(none)"])
        n = checks.integer(body.get("n", 16), "n", 1, checks.MAX_IMAGES)
        seed = checks.integer(body.get("seed", 0), "seed", 0, 2**31 - 1)
        cls = body.get("cls")
        if cls is not None:
            cls = checks.integer(cls, "cls", 0, 2**31 - 1)  # the sampler says which classes it knows
        return answer(await run_in_threadpool(ex.sample, name, n, cls, seed))

    async def upload(request: Request) -> JSONResponse:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not kind.startswith(UPLOAD_TYPES):
            raise BadRequest("upload the image file itself as the request body (Content-Type image/png, "
                             f"image/jpeg, ...), not {kind or 'no type'}", 415)
        return answer(await run_in_threadpool(ex.upload, await _body(request, MAX_UPLOAD_BYTES)))

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        status = exc.status if isinstance(exc, BadRequest) else 400
        return JSONResponse({"error": str(exc)}, status_code=status, headers=HEADERS)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        text = {404: f"nothing here: {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return JSONResponse({"error": text.get(exc.status_code, str(exc.detail))}, status_code=exc.status_code,
                            headers=HEADERS)

    async def failed(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not a bad request: one line for the page; the server's log has the traceback.
        return JSONResponse({"error": f"internal error ({exc.__class__.__name__}); see the server's log"},
                            status_code=500, headers=HEADERS)

    routes = [Route("/", asset("index.html")), Route("/static/explore.js", asset("explore.js")),
              Route("/static/explore.css", asset("explore.css")), Route("/api/info", info),
              Route("/api/item/{index:int}", item), Route("/api/decode", decode, methods=["POST"]),
              Route("/api/interpolate", interpolate, methods=["POST"]), Route("/api/sample", sample, methods=["POST"]),
              Route("/api/upload", upload, methods=["POST"])]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={VaelabError: refused, HTTPException: http_error, Exception: failed})
    app.state.explorer = ex
    return app
