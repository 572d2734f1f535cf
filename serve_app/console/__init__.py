"""The web console: server-rendered pages (Jinja2 + htmx) over the same actor calls as the /v1 API."""
