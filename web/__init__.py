"""The web dashboard: server-rendered pages (Jinja2) with htmx, served at `/` by the same
Starlette app as the API (`postern serve` mounts it: gateway.process.service).

    web.app       the dashboard's own Starlette app, mounted after the API's routes
    web.guard     who is signed in (a session only), CSRF and roles, HTML error answers
    web.headers   the security headers of every dashboard answer
    web.render    templates, the navigation, the static files (content-hashed URLs)
    web.pages     one module per page

It reuses the API's own logic (api.auth, api.pool_ops, gateway.people): a page checks
exactly what the API checks. Nothing imports web but gateway.process.
"""
