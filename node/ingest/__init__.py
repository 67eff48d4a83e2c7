"""The receive path: a C-STORE from the socket to its Success, and nothing after it.

A C-STORE, in the order it meets the modules (each imports only those above it in its own
chain, never one below):

1. ``listener``: ``ListeningServer`` accepts the connection (Nagle off, kernel timeouts, TLS
   wrapped), asks ``admission`` whether to take it (a flood of bare connects costs bounded
   threads) and builds an ``association.EventAssociation`` on a ``pdu_socket.PduSocket``.
2. ``dul``: the association's DUL thread reads whole PDUs off the socket; a P-DATA-TF of a
   plain C-STORE goes to ``direct_store``, anything else to pynetdicom's own decoding.
3. ``direct_store``: decodes the command set by hand, collects the dataset fragments into a
   ``c_store.StoreRequest`` and calls the store handler; ``association`` takes the unusual
   ones (split commands, C-ECHO, release) through pynetdicom to ``scp``'s ``_on_store``,
   which builds the same request.
4. ``scp``: ``StorageSCP`` owns the listeners and decides who may associate (called AE,
   ``access.callers``, TLS certificate); its ``store`` hands the request to ``store``.
5. ``store``: ``InstanceStore`` reads the header (``header``, ``header_values``, and
   ``dataset_end`` for a dataset cut short), answers a re-send without writing (``resend``),
   writes the file durably (``spool``: temp file, fsync, rename, folder fsync), commits its
   row (``index``) and notes the study for the release (``deliveries``). A refusal is a
   typed exception whose status ``store.reply_for`` picks by type. With ``storage.journal``
   it appends the instance to the write-ahead journal instead (``mover``, ``journal``,
   ``journal_format``) and waits for its group commit; the mover thread files it into the
   spool and index a batch later (``move``), and start-up replays what it had not filed.
6. Back on the DUL thread, ``direct_store`` sends the reply (a ``c_store.StoreReply``) as one
   hand-encoded P-DATA PDU (``responses``); pynetdicom's path encodes it with ``responses``'
   ``FastResponseDIMSE``. The instance is on disk and indexed (or, with the journal,
   committed to the journal) before the peer reads 0x0000.

With ``listener.processes`` > 1 steps 1 to 6 run in each of N receiver processes
(``receiver``, started by ``receivers`` in the node's process; ``association_slots`` counts
``max_associations`` across them): each journals into its own folder and sends the record
over its pipe (``receiver_channel``); the node's process files every receiver's records
(``move``), the only writer of the index.

At start-up after a crash ``recovery`` indexes the spool files that missed their row,
listing only the series folders written since the spool checkpoint (``checkpoint``: the
spool notes each file's window from rename to row, the index records the checkpoint).

``c_store`` holds the request, reply and statuses both paths share, so ``direct_store``
needs nothing of ``association`` or ``scp``. What happens next (the quiet timer, versions)
is ``node.assembler``'s, reading the index's tables.

Whatever here touches pynetdicom's private names does so through ``node.pynetdicom_seam``.
On a pynetdicom version the seam does not know, ``listener`` takes pynetdicom's own request
handler: its own association, DUL and responses replace steps 2, 3 and 6, and a C-STORE
reaches ``scp`` through pynetdicom's service class.
"""
