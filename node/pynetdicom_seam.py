"""Every use of pynetdicom's private API, and the version check that decides whether to use it.

The fast receive path (``node.ingest``: event-driven DUL and association reactors, C-STOREs
read straight off their PDUs) and the SCU's lost-response fix (``node.scu``) lean on pynetdicom
internals: names starting with ``_``, which a release may change without notice. They are all
here, behind functions and base classes with names of ours, and nowhere else in ``node/``
(``tests/test_pynetdicom_seam.py``). They were read from pynetdicom 3.0.x, which pyproject.toml
pins. On any other version this module logs one WARNING at import and sets ``FAST_PATH``
False; each fast-path site checks that one flag, and the node then serves with pynetdicom's
own request handler and reactors and sends with its own ``send_c_store``: slower, and exposed
to the lost C-STORE response (docs/upstream/README.md), but working, as
``node.outputs.seg_packed.PACKED_PATH`` falls back to highdicom's own path. With
``FAST_PATH`` False nothing here touches a private name except ``set_option`` (pynetdicom's
documented options live in its ``_config`` module).

``AINODE_PYNETDICOM_VERSION`` stands in for the installed version: for the tests of the
fallback (``tests/test_pynetdicom_fallback.py``), never for production.
"""

from __future__ import annotations

import logging
import os
from copy import deepcopy
from datetime import datetime
from typing import Any

import pynetdicom
from packaging.version import InvalidVersion, Version
from pynetdicom import _config, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket, RequestHandler

__all__ = [
    "FAST_PATH",
    "VERSION",
    "HookedAssociation",
    "HookedDUL",
    "HookedRequestHandler",
    "accepted_context",
    "check_version",
    "is_killed",
    "release_sent",
    "replace_reactor_checkpoint",
    "server_of",
    "set_option",
    "stop_association_reactor",
]

LOGGER = logging.getLogger(__name__)

#: Stands in for ``pynetdicom.__version__`` (tests of the fallback only).
VERSION_ENV = "AINODE_PYNETDICOM_VERSION"
#: The (major, minor) releases whose internals this module was written against.
KNOWN_RELEASES = frozenset({(3, 0)})


def check_version(version: str) -> bool:
    """Whether the fast path may run on pynetdicom ``version``; logs one WARNING if not."""
    try:
        known = Version(version).release[:2] in KNOWN_RELEASES
    except InvalidVersion:
        known = False
    if not known:
        LOGGER.warning(
            "pynetdicom %s is not a version ainode knows (3.0.x): serving and sending with "
            "pynetdicom's own association code, without ainode's fast receive path or its "
            "fix for lost C-STORE responses",
            version,
        )
    return known


#: The pynetdicom version the decision was taken for.
VERSION: str = os.environ.get(VERSION_ENV) or pynetdicom.__version__
#: Whether the fast paths run; every site that uses one checks this flag.
FAST_PATH: bool = check_version(VERSION)


def set_option(name: str, value: object) -> None:
    """Set one of pynetdicom's process-wide options (documented, though its module is named
    ``_config``); one this version lacks is logged and left alone."""
    if not hasattr(_config, name):
        LOGGER.warning("pynetdicom %s has no option %s; not set", VERSION, name)
        return
    setattr(_config, name, value)


# -- an association's state, read where pynetdicom keeps it --------------------------------


def accepted_context(assoc: Association, context_id: int) -> PresentationContext | None:
    """The accepted presentation context with this ID (a dict lookup, not the sorted list
    ``accepted_contexts`` builds on every call)."""
    return assoc._accepted_cx.get(context_id)


def is_killed(assoc: Association) -> bool:
    """The association's reactor has been told to stop (``kill``, an abort, the DUL's end)."""
    return bool(assoc._kill)


def release_sent(assoc: Association) -> bool:
    """Our A-RELEASE-RP is queued or out: pynetdicom sets ``_sent_release`` before sending it
    and ``is_released`` only after. False on the stock path, where callers use ``is_released``."""
    return FAST_PATH and bool(getattr(assoc, "_sent_release", False))


def server_of(assoc: Association) -> Any:
    """The server that accepted this association (None for a requestor)."""
    return assoc._server


def stop_association_reactor(assoc: Association) -> None:
    """Stop the association's loop at its next pass, as pynetdicom's DUL does on an error."""
    assoc._kill = True


def replace_reactor_checkpoint(assoc: Association, checkpoint: Any) -> None:
    """Put ``checkpoint`` where pynetdicom's ``send_*`` methods pause the reactor (an object
    with ``Event``'s ``set``/``clear``/``is_set``/``wait``)."""
    assoc._reactor_checkpoint = checkpoint


# -- pynetdicom's private hooks under names of ours ---------------------------------------


class HookedAssociation(Association):
    """pynetdicom's ``Association`` whose established-association loop is ``serve_loop``."""

    def _run_reactor(self) -> None:
        self._is_paused = False
        self.serve_loop()

    def serve_loop(self) -> None:
        """Serve the established association until it ends (pynetdicom's own loop here)."""
        super()._run_reactor()

    def checkpoint(self) -> None:
        """Where pynetdicom's ``send_*`` and ``release`` may hold the loop: they clear the
        checkpoint and wait until ``_is_paused`` says the loop is at it."""
        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False

    def serve_request(self, message: Any, context_id: int) -> None:
        """Serve one DIMSE request through pynetdicom's service classes and handlers."""
        self._serve_request(message, context_id)


class HookedDUL(DULServiceProvider):
    """pynetdicom's DUL reactor with the private parts a loop of ours needs, under our names:
    ``read_pdu`` and ``transport_event`` are the hooks pynetdicom's loop calls."""

    def _read_pdu_data(self) -> None:
        self.read_pdu()

    def read_pdu(self) -> None:
        """Read one PDU off the socket and queue its event (pynetdicom's own read here)."""
        super()._read_pdu_data()

    def _is_transport_event(self) -> bool:
        return self.transport_event()

    def transport_event(self) -> bool:
        """Read a PDU if the socket has one; whether it did (pynetdicom's own check here)."""
        return bool(super()._is_transport_event())

    @property
    def stop_requested(self) -> bool:
        return bool(self._kill_thread)

    def signal_ready(self) -> None:
        """Let the association thread go on: it waits for the DUL to run before it reads."""
        ready = self.assoc._dul_ready
        if not ready.is_set():
            ready.set()

    def start_idle_timer(self) -> None:
        self._idle_timer.start()

    def restart_idle_timer(self) -> None:
        self._idle_timer.restart()

    def send_next_primitive(self) -> bool:
        """Turn the next primitive the user queued into a state-machine event, if any."""
        return bool(self._process_recv_primitive())

    def decode_pdu(self, data: bytearray) -> tuple[Any, str]:
        """The PDU object and its state-machine event (``EVT_PDU_RECV`` and the like fire)."""
        return self._decode_pdu(data)

    def deliver_pdu(self, pdu: Any, event: str) -> None:
        """Queue a decoded PDU and its event for the state machine."""
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)


class HookedRequestHandler(RequestHandler):
    """pynetdicom's request handler, its ``_create_association`` copied (3.0.4) with two
    hooks: ``new_association`` and ``new_socket``."""

    def new_association(self, mode: str) -> Association:
        return Association(self.ae, mode)

    def new_socket(self, assoc: Association) -> AssociationSocket:
        return AssociationSocket(assoc, client_socket=self.request)

    def _create_association(self) -> Association:
        assoc = self.new_association(MODE_ACCEPTOR)
        assoc._server = self.server
        # "AcceptorThread" is how the server's ``active_associations`` finds its threads
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(self.new_socket(assoc))
        acceptor = assoc.acceptor
        acceptor.maximum_length = self.ae.maximum_pdu_size
        acceptor.ae_title = self.server.ae_title
        acceptor.address_info = self.local
        acceptor.implementation_class_uid = self.ae.implementation_class_uid
        acceptor.implementation_version_name = self.ae.implementation_version_name
        acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        handlers = self.server._handlers
        for event in handlers:
            if event.is_intervention and handlers[event]:
                assoc.bind(event, *handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in handlers[event]:
                    assoc.bind(event, handler[0], handler[1])
        return assoc
