"""The HTTP API: decisions, events, catalog admin, reports, health and metrics (FastAPI).

`create_app(settings)` in `app` builds the application; `server.serve(settings)` runs it under
uvicorn. Resources (database, catalog cache, policy holder, publisher, key cache, metrics) live in
the app's lifespan and reach routes through the typed dependencies in `deps`.

Errors (`errors`): `ApiError` (base, carries status and code) ← `Unauthorized` (401),
`Forbidden` (403), `ProductNotFound` / `VariantNotFound` (404), `ControlNotRetirable` (409),
`InvalidRequest` (422), `BatchTooLarge` (413).
`errors.install` is the one place that turns exceptions into JSON error responses.
"""
