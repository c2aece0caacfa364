"""A real SMTP server for the end-to-end tests: aiosmtpd on 127.0.0.1 with an
ephemeral port, in a thread of the test process.

    with SmtpServer() as smtp:          # or smtp.start() ... smtp.stop()
        env = {"HERALD_SMTP_URL": smtp.url}
        smtp.refuse("DATA", "451 4.3.0 try later", times=1)   # next DATA only
        msg = smtp.wait_messages(1)[0]
        msg.mail_from, msg.rcpt_tos, msg.data (raw bytes), msg.message (parsed)

Every accepted mail is kept with its envelope (MAIL FROM, RCPT TO) and its
raw bytes as the server received them (aiosmtpd has already undone the
dot-stuffing), plus the message parsed by Python's email package with the
default (RFC 5322 + RFC 2047 aware) policy. `refuse(stage, reply, times)`
answers the next `times` commands of a stage ("MAIL", "RCPT" or "DATA")
with `reply` instead of accepting them; `attempts[stage]` counts every
command of each stage, refused or not. With `auth=(user, password)` the
server requires AUTH (over plain TCP: aiosmtpd's auth_require_tls is off,
this is a loopback test) and records the login in `logins`.

Requires /usr/bin/python3 (Debian's python3-aiosmtpd)."""

import email
import email.policy
import threading
import time
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

WAIT_TIMEOUT = 60.0  # generous: the ASan build and a shared machine


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list
    data: bytes
    message: object = field(repr=False)  # email.message.EmailMessage


class _EphemeralController(Controller):
    """Controller bound to port 0: the real port is read from the listening
    socket before aiosmtpd connects to itself to finish starting."""

    def _trigger_server(self):
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class _Handler:
    def __init__(self, owner):
        self.owner = owner

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        refused = self.owner._take("MAIL")
        if refused:
            return refused
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        refused = self.owner._take("RCPT")
        if refused:
            return refused
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        refused = self.owner._take("DATA")
        if refused:
            return refused
        raw = envelope.content if isinstance(envelope.content, bytes) else \
            envelope.content.encode("utf-8", "surrogateescape")
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        self.owner._add(Received(envelope.mail_from, list(envelope.rcpt_tos), raw, msg))
        return "250 2.0.0 Message accepted for delivery"


class SmtpServer:
    def __init__(self, auth=None):
        self.auth = auth
        self.messages = []
        self.logins = []
        self.attempts = {"MAIL": 0, "RCPT": 0, "DATA": 0}
        self._refusals = {"MAIL": [], "RCPT": [], "DATA": []}
        self._cond = threading.Condition()
        self._controller = None

    # ---- life cycle ----

    def start(self):
        kwargs = {}
        if self.auth:
            kwargs.update(auth_required=True, auth_require_tls=False,
                          authenticator=self._authenticate)
        self._controller = _EphemeralController(_Handler(self), hostname="127.0.0.1", port=0,
                                                ready_timeout=WAIT_TIMEOUT, **kwargs)
        self._controller.start()
        return self

    def stop(self):
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self):
        return self._controller.port

    @property
    def url(self):
        return f"smtp://127.0.0.1:{self.port}"

    # ---- behaviour ----

    def refuse(self, stage, reply, times=1):
        """Answer the next `times` commands of stage (MAIL, RCPT or DATA)
        with reply, e.g. "451 4.3.0 try later" or "550 5.1.1 no such user"."""
        with self._cond:
            self._refusals[stage].extend([reply] * times)

    def _take(self, stage):
        with self._cond:
            self.attempts[stage] += 1
            self._cond.notify_all()
            queue = self._refusals[stage]
            return queue.pop(0) if queue else None

    def _add(self, received):
        with self._cond:
            self.messages.append(received)
            self._cond.notify_all()

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        login = getattr(auth_data, "login", None)
        password = getattr(auth_data, "password", None)
        if isinstance(login, bytes):
            login = login.decode()
        if isinstance(password, bytes):
            password = password.decode()
        ok = (login, password) == tuple(self.auth)
        with self._cond:
            self.logins.append((mechanism, login, ok))
        return AuthResult(success=ok)

    # ---- waiting ----

    def wait_messages(self, n, timeout=WAIT_TIMEOUT):
        """Wait until at least n mails were accepted; returns all of them."""
        return self._wait(lambda: len(self.messages) >= n, f"{n} mail(s)", timeout,
                          lambda: list(self.messages))

    def wait_attempts(self, stage, n, timeout=WAIT_TIMEOUT):
        """Wait until the server saw at least n commands of stage."""
        return self._wait(lambda: self.attempts[stage] >= n, f"{n} {stage} command(s)",
                          timeout, lambda: self.attempts[stage])

    def _wait(self, ready, what, timeout, result):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"SMTP server: no {what} within {timeout}s "
                                         f"(mails {len(self.messages)}, "
                                         f"commands {self.attempts})")
                self._cond.wait(left)
            return result()
