"""The example's web dashboard: a login page with sessions, behind the WAF
gateway the operator injects. It listens on loopback, on the backend port
the gateway proxies to (IOTPOSTURE_BACKEND_PORT_HTTPS), and speaks plain
HTTP; the gateway terminates TLS. The password comes from a file
(DASHBOARD_PASSWORD_FILE, a mounted Secret), never from the environment.

GET /login gives an anonymous session; POST /login with the right username
and password gives a new one (never the old: no session fixation) and
redirects to /; a wrong password gets 401. GET / shows the dashboard to a
logged-in session and sends others to the login page.
"""

import html
import http.server
import os
import secrets
import urllib.parse

# The gateway tells each port's backend as IOTPOSTURE_BACKEND_PORT_<PORT NAME>.
PORT = int(
    os.environ.get("IOTPOSTURE_BACKEND_PORT_HTTPS")
    or next(
        (v for k, v in sorted(os.environ.items()) if k.startswith("IOTPOSTURE_BACKEND_PORT_")),
        "18443",
    )
)
# Loopback behind the gateway; 0.0.0.0 only to show what a bare one looks like.
LISTEN = os.environ.get("DASHBOARD_LISTEN", "127.0.0.1")
USER = os.environ.get("DASHBOARD_USER", "operator")


def read_password():
    path = os.environ.get("DASHBOARD_PASSWORD_FILE", "")
    if not path:
        return ""
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


PASSWORD = read_password()
LINE = os.environ.get("DASHBOARD_LINE", "line-1")

# session id -> user name, or "" for a session that has not logged in
SESSIONS: dict[str, str] = {}

LOGIN_FORM = """<!doctype html><title>{line} dashboard: log in</title>
<h1>{line}</h1><form method="post" action="/login">
<label>User <input name="username"></label>
<label>Password <input name="password" type="password"></label>
<button>Log in</button></form>{note}"""


class Dashboard(http.server.BaseHTTPRequestHandler):
    server_version = "dashboard"
    sys_version = ""

    def session(self):
        for part in self.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "session" and value in SESSIONS:
                return value
        return None

    def reply(self, status, body="", headers=()):
        data = body.encode()
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def new_session(self, user):
        sid = secrets.token_urlsafe(24)
        SESSIONS[sid] = user
        # The gateway adds Secure, HttpOnly and SameSite.
        return ("Set-Cookie", f"session={sid}; Path=/")

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/healthz":
            return self.reply(200, "ok")
        if path == "/login":
            return self.reply(
                200,
                LOGIN_FORM.format(line=html.escape(LINE), note=""),
                [self.new_session("")],
            )
        sid = self.session()
        if sid is None or not SESSIONS[sid]:
            return self.reply(302, "", [("Location", "/login")])
        return self.reply(
            200,
            f"<!doctype html><title>{html.escape(LINE)}</title>"
            f"<h1>{html.escape(LINE)}</h1><p>Logged in as {html.escape(SESSIONS[sid])}.</p>",
        )

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(min(length, 65536)).decode(errors="replace"))
        if path != "/login":
            return self.reply(200, "ok")
        user = form.get("username", [""])[0]
        password = form.get("password", [""])[0]
        if PASSWORD and secrets.compare_digest(user, USER) and secrets.compare_digest(password, PASSWORD):
            old = self.session()
            if old is not None:
                del SESSIONS[old]
            return self.reply(302, "", [("Location", "/"), self.new_session(user)])
        return self.reply(
            401, LOGIN_FORM.format(line=html.escape(LINE), note="<p>Wrong user or password.</p>")
        )

    def log_message(self, format, *args):
        # One line per request on stderr, without the client's address twice.
        print(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}", flush=True)


if __name__ == "__main__":
    if not PASSWORD:
        raise SystemExit("no password: set DASHBOARD_PASSWORD_FILE to a mounted Secret's file")
    http.server.ThreadingHTTPServer((LISTEN, PORT), Dashboard).serve_forever()
