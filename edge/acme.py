"""Automatic certificates over ACME (RFC 8555): order, store, renew, and answer HTTP-01 challenges.

Theory of operation. ``tls.acme`` names one set of DNS names; edge keeps one certificate
for all of them. Every worker runs an ``AcmeManager`` greenlet (started after fork,
stopped with the worker) that, every ``check_interval`` or sooner when a retry is due:

1. syncs: the certificate in the shared store is the fleet's copy; when the one on disk
   (``storage_dir``) differs, the one that expires later wins and is copied to the other
   side, so every node serves the same certificate and keeps it across restarts, and a
   store that lost it (a fresh Redis) or missed it (down during the order) gets it back;
2. reloads: when the files on disk changed since this worker last loaded them, it builds a
   new server ``SSLContext`` from them and hands it to every callback registered with
   ``on_change`` (the SNI code swaps it in; nothing restarts);
3. renews: when there is no certificate, its names differ from the configured ones, or it
   expires within ``renew_before`` (``renewal_due``, pure), and no back-off is pending, the
   worker tries to take the lease ``acme:lease:<set>`` in the store (``acquire_lock`` with a
   TTL, renewed between every step of the order, polling included). Only the holder orders,
   so one worker of one node orders at a time; the others see the new certificate at their
   next sync. A holder that finds its lease gone (it expired, another worker took it) stops
   its order at once (``LeaseLost``). Every ACME call has a network timeout far below the
   lease's TTL, and polling runs in short steps, so a slow CA cannot outlast the lease.

Ordering (RFC 8555 §7): the account key (RSA 2048, one per ACME directory, shared through
the store so a fleet has one account) registers or finds its account (§7.3, a
``ConflictError`` means it exists), a new order with a CSR for the names (a fresh EC P-256
key per certificate) lists the authorizations; for each pending one edge publishes the
HTTP-01 key authorization (§8.3: ``token || '.' || base64url(JWK thumbprint)``) in the store
under ``acme:chal:<token>`` with a TTL, tells the CA to validate, and polls the order until
it is finalized; then the full chain and key are written to the store and to disk (keys
0600, files replaced atomically) and the published tokens are withdrawn.

HTTP-01 answers (§8.3): the CA fetches ``http://<name>/.well-known/acme-challenge/<token>``
on port 80 and may reach any worker of any node, so the answer comes from the store, not
from the memory of the worker that ordered. ``answer_challenge`` is called by the request
path before routing and plugins (a WAF or an auth plugin must not stand between the CA and
its token); a token that is not base64url (§8.1) is refused without a store call.

Failures back off exponentially (``backoff_s``: ``retry_initial`` doubled per consecutive
failure, at most ``retry_max``); the count and the next attempt time live in the store, so a
fleet backs off together and a restart does not reset it (CAs rate-limit failed
validations). Every order and failure is logged on ``edge.acme`` and counted
(``acme.order.ok``, ``acme.order.error``).

The seam with TLS termination (edge/tls.py, SNI): ``AcmeManager.current()`` returns the
paths, names and expiry of the certificate on disk (or None), ``AcmeManager.context`` the
latest ``SSLContext`` built from it, and ``on_change(callback)`` calls ``callback(context,
info)`` in the worker whenever a new certificate was loaded; an SNI callback that sees one of
``names`` sets ``sslsock.context = manager.context``. ``context_factory(cert_path, key_path)``
builds that context; the termination code passes its own builder so the ACME certificate is
served with the same versions, ciphers and ALPN as the configured ones.

Not done: the TLS-ALPN-01 challenge (RFC 8737). It needs the listener to present a special
certificate when a ClientHello offers ALPN ``acme-tls/1``, and Python's ``ssl`` shows the
client's ALPN offer only after the certificate is chosen (the SNI callback cannot see it), so
the answer could not be limited to the CA's validation connections.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import random
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edge.certs import write_private
from edge.errors import StoreUnavailable

log = logging.getLogger("edge.acme")

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
#: RFC 8555 §8.1: a token is base64url without padding; bounded so a crafted path costs nothing
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")
CHALLENGE_TTL_S = 600.0       # a published key authorization outlives any validation of one order
NETWORK_TIMEOUT_S = 15        # one HTTP exchange with the ACME server (connect, and each read)
POLL_STEP_S = 10.0            # polling runs in steps this long, the lease renewed between them
#: The ordering worker renews the lease between every step of an order (keep_alive); the
#: longest wait between two renewals is a few ACME calls (new-account: nonce and post; a
#: polling step and its last call), so the TTL is several of the longest of them.
LEASE_TTL_S = 8 * NETWORK_TIMEOUT_S
ORDER_TIMEOUT_S = 180.0       # polling of one order, from the challenges to the certificate
MIN_SLEEP_S = 0.2


# ---------------------------------------------------------------- pure core


@dataclass(frozen=True, slots=True)
class CertFacts:
    """What renewal needs to know about a certificate (from its PEM)."""

    names: frozenset[str]
    not_before: float   # epoch seconds
    not_after: float
    fingerprint: str    # sha256 of the leaf, hex


def cert_facts(pem: bytes) -> CertFacts:
    """Facts of the first (leaf) certificate in ``pem``; ValueError when it is not one."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = frozenset(n.lower() for n in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = frozenset()
    return CertFacts(names, cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp(),
                     cert.fingerprint(hashes.SHA256()).hex())


def renewal_due(facts: CertFacts | None, names: frozenset[str], now: float, renew_before_s: float) -> bool:
    """True when a certificate must be ordered: none yet, other names, or expiring within ``renew_before_s``."""
    if facts is None or facts.names != names:
        return True
    return now >= facts.not_after - renew_before_s


def backoff_s(failures: int, initial_s: float, maximum_s: float) -> float:
    """The wait after ``failures`` consecutive failed orders (>= 1): doubling from ``initial_s``, capped."""
    if failures <= 0:
        return 0.0
    return min(maximum_s, initial_s * 2 ** min(failures - 1, 60))


def set_id(names: tuple[str, ...] | frozenset[str], directory: str) -> str:
    """A short stable id of (directory, names): keys in the store and the folder on disk."""
    text = directory + "\n" + "\n".join(sorted(names))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def valid_token(token: str) -> bool:
    return _TOKEN_RE.fullmatch(token) is not None


# ---------------------------------------------------------------- files


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """The ACME certificate on disk: what the SNI code loads (``AcmeManager.current``)."""

    cert_path: Path
    key_path: Path
    names: frozenset[str]
    not_after: float
    fingerprint: str


class Storage:
    """``storage_dir/account-<directory>.key`` and ``storage_dir/<set>/{cert.pem,key.pem}``."""

    def __init__(self, root: str | Path, directory: str, sid: str) -> None:
        self.root = Path(root)
        self.account_path = self.root / f"account-{hashlib.sha256(directory.encode()).hexdigest()[:12]}.key"
        self.cert_path = self.root / sid / "cert.pem"
        self.key_path = self.root / sid / "key.pem"

    def read(self) -> tuple[bytes, bytes] | None:
        try:
            return self.cert_path.read_bytes(), self.key_path.read_bytes()
        except FileNotFoundError:
            return None

    def write(self, cert_pem: bytes, key_pem: bytes) -> None:
        # key first: a reader that sees the new certificate also finds its key
        write_private(self.key_path, key_pem)
        write_private(self.cert_path, cert_pem, 0o644)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


# ---------------------------------------------------------------- the ACME exchange


class OrderError(Exception):
    """An order that did not produce a certificate (the reason is logged; the caller backs off)."""


class LeaseLost(OrderError):
    """The ordering lease expired or was taken while the order ran: another worker may be
    ordering, so this one stops (it will see that worker's certificate at its next sync)."""


def poll_in_steps(poll: Callable[[datetime.datetime], object], deadline: datetime.datetime,
                  keep_alive: Callable[[], None], timeout_error: type[Exception]):
    """``poll(step_deadline)`` again and again with deadlines at most ``POLL_STEP_S`` away, and
    ``keep_alive()`` between the calls, until it returns (its value) or ``deadline`` passed
    (``timeout_error``, which ``poll`` raises when its step deadline passed)."""
    while True:
        step_deadline = min(deadline, datetime.datetime.now() + datetime.timedelta(seconds=POLL_STEP_S))
        try:
            return poll(step_deadline)
        except timeout_error:
            if datetime.datetime.now() >= deadline:
                raise
        keep_alive()


def order_certificate(cfg, account_key_pem: bytes, publish: Callable[[str, bytes], None],
                      withdraw: Callable[[str], None], keep_alive: Callable[[], None]) -> tuple[bytes, bytes]:
    """Run one order for ``cfg.names`` (RFC 8555 §7.4); the full chain PEM and its private key PEM.

    ``publish(token, key_authorization)`` makes a challenge answerable before the CA is told
    to validate it; ``withdraw(token)`` removes it afterwards; ``keep_alive()`` is called
    between steps (it extends the lease). Raises ``OrderError``."""
    import josepy as jose
    import requests
    from acme import challenges, client, crypto_util, errors, messages

    account_key = jose.JWKRSA(key=serialization.load_pem_private_key(account_key_pem, password=None))
    net = client.ClientNetwork(account_key, user_agent="edge", verify_ssl=cfg.ca_bundle or True,
                               timeout=NETWORK_TIMEOUT_S)
    published: list[str] = []
    try:
        acme = client.ClientV2(client.ClientV2.get_directory(cfg.directory, net), net)
        keep_alive()
        registration = messages.NewRegistration.from_data(email=cfg.email, terms_of_service_agreed=True)
        try:
            acme.new_account(registration)
        except errors.ConflictError as e:
            # RFC 8555 §7.3.1: the key already has an account; its URL is the "kid" from now on.
            net.account = messages.RegistrationResource(uri=e.location, body=messages.Registration())
        keep_alive()
        cert_key_pem = _key_pem(ec.generate_private_key(ec.SECP256R1()))
        orderr = acme.new_order(crypto_util.make_csr(cert_key_pem, list(cfg.names)))
        for authzr in orderr.authorizations:
            if authzr.body.status == messages.STATUS_VALID:
                continue  # RFC 8555 §7.1.4: a still-valid authorization needs no new challenge
            challb = next((c for c in authzr.body.challenges if isinstance(c.chall, challenges.HTTP01)), None)
            if challb is None:
                raise OrderError(f"the CA offers no http-01 challenge for {authzr.body.identifier.value}")
            response, validation = challb.response_and_validation(account_key)
            token = challb.chall.encode("token")
            publish(token, validation.encode())
            published.append(token)
            acme.answer_challenge(challb, response)
            keep_alive()
        # acme.poll_and_finalize in steps (poll the authorizations, ask for the certificate,
        # poll the order), the lease renewed between steps: a CA taking minutes must not let
        # the lease lapse and a second worker order meanwhile.
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT_S)
        orderr = poll_in_steps(lambda step_deadline: acme.poll_authorizations(orderr, step_deadline), deadline,
                               keep_alive, errors.TimeoutError)
        try:
            acme.begin_finalization(orderr)
        except messages.Error as e:
            if e.code != "orderNotReady":  # not ready yet: poll_finalization asks again when it is
                raise
        keep_alive()
        orderr = poll_in_steps(lambda step_deadline: acme.poll_finalization(orderr, step_deadline), deadline,
                               keep_alive, errors.TimeoutError)
        return orderr.fullchain_pem.encode(), cert_key_pem
    except OrderError:
        raise
    except errors.ValidationError as e:
        problems = "; ".join(
            f"{a.body.identifier.value}: {ch.error.detail if ch.error else a.body.status}"
            for a in e.failed_authzrs for ch in a.body.challenges if ch.error is not None
        ) or "authorization failed"
        raise OrderError(f"validation failed: {problems}") from None
    except (errors.Error, messages.Error, jose.Error, requests.RequestException, OSError, ValueError) as e:
        # the CA said no, could not be reached, or answered something unreadable; anything
        # else is a bug and reaches AcmeManager._run's traceback instead
        raise OrderError(f"{type(e).__name__}: {e}") from None
    finally:
        for token in published:
            withdraw(token)


# ---------------------------------------------------------------- per-worker manager


class AcmeManager:
    """One worker's view of the ACME certificate: challenge answers, sync, renewal (module docstring)."""

    def __init__(self, cfg, store, metrics, clock: Callable[[], float] = time.time,
                 context_factory: Callable[[Path, Path], ssl.SSLContext] | None = None) -> None:
        self.cfg = cfg
        # Builds the server context from (cert_path, key_path): the TLS termination code passes its
        # own so the ACME certificate gets the listeners' settings (versions, ciphers, ALPN h2).
        self.context_factory = context_factory or default_server_context
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.names = frozenset(cfg.names)
        self.sid = set_id(self.names, cfg.directory)
        self.storage = Storage(cfg.storage_dir, cfg.directory, self.sid)
        self.cert_key = f"acme:cert:{self.sid}"
        self.lease_key = f"acme:lease:{self.sid}"
        self.fail_key = f"acme:fail:{self.sid}"
        self.account_key = f"acme:account:{hashlib.sha256(cfg.directory.encode()).hexdigest()[:12]}"
        self.context: ssl.SSLContext | None = None
        self._info: CertificateInfo | None = None
        self._loaded_fp: str | None = None
        self._callbacks: list[Callable[[ssl.SSLContext, CertificateInfo], None]] = []
        self._greenlet = None
        self.orders = 0  # orders this worker placed (tests, status)

    # -- the seam with TLS termination

    def current(self) -> CertificateInfo | None:
        """The certificate on disk that this worker last loaded (None before the first)."""
        return self._info

    def on_change(self, callback: Callable[[ssl.SSLContext, CertificateInfo], None]) -> None:
        """Call ``callback(context, info)`` now if a certificate is loaded, and after every change."""
        self._callbacks.append(callback)
        if self.context is not None and self._info is not None:
            callback(self.context, self._info)

    # -- HTTP-01

    def answer_challenge(self, token: str) -> bytes | None:
        """The key authorization published for ``token``, or None (unknown, expired, malformed)."""
        if not valid_token(token):
            return None
        try:
            return self.store.get(f"acme:chal:{token}")
        except StoreUnavailable:
            log.warning("acme: store unavailable while answering a challenge")
            return None

    # -- lifecycle

    def start(self) -> None:
        import gevent

        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self) -> None:
        import gevent

        # Workers start together: a little jitter spreads their first lease attempts.
        gevent.sleep(random.uniform(0, 0.5))
        while True:
            try:
                wait_s = self.step()
            except OSError as e:
                # storage_dir not writable, disk full: say so plainly and keep trying
                log.error("acme: %s", e)
                self.metrics.incr("acme.check_error")
                wait_s = self.cfg.retry_initial
            except Exception:
                # A bug in one step must not end renewal for the life of the worker: log, retry later.
                log.exception("acme: renewal check failed")
                self.metrics.incr("acme.check_error")
                wait_s = self.cfg.retry_initial
            gevent.sleep(max(MIN_SLEEP_S, wait_s))

    # -- one check

    def step(self) -> float:
        """Sync, reload, renew if due; the seconds until the next check."""
        now = self.clock()
        pair = self._sync()
        if pair is not None:
            self._load(pair)
        facts = _facts_or_none(pair[0]) if pair is not None else None
        if not renewal_due(facts, self.names, now, self.cfg.renew_before):
            return min(self.cfg.check_interval, max(MIN_SLEEP_S, facts.not_after - self.cfg.renew_before - now))
        failures, next_try = self._failures()
        if now < next_try:
            return min(self.cfg.check_interval, next_try - now)
        self._order_with_lease(failures)
        return min(self.cfg.check_interval, 1.0)

    def _sync(self) -> tuple[bytes, bytes] | None:
        """Make disk and store agree; the current (cert, key) PEMs or None.

        The copy that expires later wins (the store's on a tie): a certificate written to
        disk while the store was down is published when it is back, and one ordered on
        another node replaces the older one here."""
        disk = self.storage.read()
        try:
            raw = self.store.get(self.cert_key)
        except StoreUnavailable:
            return disk  # serve and renew from disk; the store is tried again next time
        shared = None
        if raw is not None:
            try:
                doc = json.loads(raw)
                shared = (doc["cert"].encode(), doc["key"].encode())
            except (ValueError, KeyError, TypeError):
                log.error("acme: ignoring an unreadable certificate entry %s in the store", self.cert_key)
        if shared is None or shared == disk:
            if disk is not None and shared is None:
                self._publish(disk)
            return disk
        if disk is not None and _expiry(disk[0]) > _expiry(shared[0]):
            self._publish(disk)
            return disk
        self.storage.write(*shared)
        return shared

    def _publish(self, pair: tuple[bytes, bytes]) -> None:
        doc = json.dumps({"cert": pair[0].decode(), "key": pair[1].decode()}).encode()
        try:
            self.store.set(self.cert_key, doc)
        except StoreUnavailable:
            log.warning("acme: store unavailable: the certificate is on disk only until the next check")

    def _load(self, pair: tuple[bytes, bytes]) -> None:
        facts = _facts_or_none(pair[0])
        if facts is None or facts.fingerprint == self._loaded_fp:
            return
        try:
            ctx = self.context_factory(self.storage.cert_path, self.storage.key_path)
        except (OSError, ssl.SSLError) as e:
            log.error("acme: cannot load %s: %s", self.storage.cert_path, e)
            return
        self._loaded_fp = facts.fingerprint
        self.context = ctx
        self._info = CertificateInfo(self.storage.cert_path, self.storage.key_path, facts.names, facts.not_after,
                                     facts.fingerprint)
        log.info("acme: loaded the certificate for %s (expires %s, in %.1f days)", ", ".join(sorted(facts.names)),
                 _utc(facts.not_after), (facts.not_after - self.clock()) / 86400)
        for callback in self._callbacks:
            callback(ctx, self._info)

    def _failures(self) -> tuple[int, float]:
        try:
            raw = self.store.get(self.fail_key)
            doc = json.loads(raw) if raw is not None else {}
            return int(doc.get("failures", 0)), float(doc.get("next_try", 0.0))
        except StoreUnavailable:
            return 0, 0.0
        except (ValueError, TypeError, AttributeError):
            return 0, 0.0  # an unreadable entry: treated as no failures (it expires by its TTL)

    def _order_with_lease(self, failures: int) -> None:
        try:
            token = self.store.acquire_lock(self.lease_key, LEASE_TTL_S)
        except StoreUnavailable:
            log.warning("acme: store unavailable: not ordering without the lease")
            return
        if token is None:
            return  # another worker (of this node or another) is ordering

        def keep_alive() -> None:
            # Renew the lease while it is still ours (acquire_lock stores the owner token as the
            # value); one store call per step of the order, seconds apart. If it is no longer
            # ours (it expired and another worker took it), that worker may be ordering: stop.
            if not self.store.cas(self.lease_key, token.encode(), token.encode(), LEASE_TTL_S):
                raise LeaseLost("the ordering lease was lost (expired or taken by another worker)")

        try:
            # Someone may have finished an order between our check and the lease.
            pair = self._sync()
            if pair is not None and not renewal_due(_facts_or_none(pair[0]), self.names, self.clock(), self.cfg.renew_before):
                self._load(pair)
                return
            self._order(failures, keep_alive)
        finally:
            try:
                self.store.release_lock(self.lease_key, token)
            except StoreUnavailable:
                pass  # the lease's TTL frees it

    def _order(self, failures: int, keep_alive: Callable[[], None]) -> None:
        names = ", ".join(sorted(self.names))
        log.info("acme: ordering a certificate for %s from %s", names, self.cfg.directory)
        self.orders += 1
        try:
            account = self._account_key()
            chain, key = order_certificate(self.cfg, account, self._publish_challenge, self._withdraw_challenge, keep_alive)
        except LeaseLost as e:
            # not the CA's failure: no back-off for the fleet; this worker tries the lease again
            # at its next check and, while the new holder orders, does not get it
            log.warning("acme: order for %s abandoned: %s", names, e)
            self.metrics.incr("acme.order.lease_lost")
            return
        except (OrderError, StoreUnavailable) as e:
            failures += 1
            wait = backoff_s(failures, self.cfg.retry_initial, self.cfg.retry_max)
            log.error("acme: order for %s failed (%d in a row; next try in %.0fs): %s", names, failures, wait, e)
            self.metrics.incr("acme.order.error")
            self._set_failures(failures, wait)
            return
        self._publish((chain, key))  # store first: a worker syncing meanwhile then copies the new one to disk
        self.storage.write(chain, key)
        facts = cert_facts(chain)
        log.info("acme: obtained a certificate for %s, valid until %s", names, _utc(facts.not_after))
        self.metrics.incr("acme.order.ok")
        self._load((chain, key))
        if renewal_due(facts, self.names, self.clock(), self.cfg.renew_before):
            # A CA issuing shorter certificates than renew_before (or other names) would otherwise
            # be asked for a new one every second: wait as after a failure instead.
            failures += 1
            wait = backoff_s(failures, self.cfg.retry_initial, self.cfg.retry_max)
            log.warning("acme: the new certificate for %s is already due for renewal (it lives %.0fs, renew_before is "
                        "%.0fs, or its names differ); next order in %.0fs", names, facts.not_after - facts.not_before,
                        self.cfg.renew_before, wait)
            self._set_failures(failures, wait)
            return
        try:
            self.store.delete(self.fail_key)
        except StoreUnavailable:
            pass  # the entry expires by its TTL

    def _set_failures(self, failures: int, wait_s: float) -> None:
        doc = json.dumps({"failures": failures, "next_try": self.clock() + wait_s}).encode()
        try:
            self.store.set(self.fail_key, doc, self.cfg.retry_max * 2)
        except StoreUnavailable:
            pass  # the others may try sooner; this worker waits at least until its next check

    def _account_key(self) -> bytes:
        """The account key for the directory: from the store, else from disk, else a new one; kept in both."""
        shared = self.store.get(self.account_key)
        if shared is not None:
            if not self.storage.account_path.exists():
                write_private(self.storage.account_path, shared)
            return shared
        try:
            pem = self.storage.account_path.read_bytes()
        except FileNotFoundError:
            pem = _key_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        # add: if another node registered a key meanwhile, use that one (one account per fleet)
        if not self.store.add(self.account_key, pem):
            pem = self.store.get(self.account_key) or pem
        write_private(self.storage.account_path, pem)
        return pem

    def _publish_challenge(self, token: str, key_authorization: bytes) -> None:
        self.store.set(f"acme:chal:{token}", key_authorization, CHALLENGE_TTL_S)

    def _withdraw_challenge(self, token: str) -> None:
        try:
            self.store.delete(f"acme:chal:{token}")
        except StoreUnavailable:
            pass  # the entry expires by its TTL


def default_server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """A server context for the certificate: TLS 1.2+, HTTP/1.1 (``AcmeManager.context_factory``'s default)."""
    from gevent import ssl as gssl

    ctx = gssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


def _utc(epoch_s: float) -> str:
    return datetime.datetime.fromtimestamp(epoch_s, datetime.timezone.utc).isoformat(timespec="seconds")


def _expiry(pem: bytes) -> float:
    facts = _facts_or_none(pem)
    return facts.not_after if facts is not None else 0.0


def _facts_or_none(pem: bytes) -> CertFacts | None:
    try:
        return cert_facts(pem)
    except ValueError:
        log.error("acme: the stored certificate cannot be read; a new one will be ordered")
        return None


def build_manager(cfg, store, metrics) -> AcmeManager | None:
    """The worker's manager when ``tls.acme`` is configured (not started)."""
    acme_cfg = cfg.tls.acme if cfg.tls is not None else None
    if acme_cfg is None:
        return None
    return AcmeManager(acme_cfg, store, metrics)
