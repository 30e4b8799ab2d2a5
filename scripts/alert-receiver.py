"""The demo's alert receiver: appends every webhook notification that
Alertmanager POSTs to a file, one JSON document per line.

Usage: alert-receiver.py FILE ADDRESS PORT
"""
import http.server
import sys


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(sys.argv[1], "ab") as out:
            out.write(body.replace(b"\n", b" ") + b"\n")
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.HTTPServer((sys.argv[2], int(sys.argv[3])), Receiver).serve_forever()
