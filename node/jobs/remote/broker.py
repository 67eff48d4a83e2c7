"""The Celery application both sides build: RabbitMQ quorum queues, JSON messages, one job
at a time per worker slot, acknowledged only once the node has the outcome.

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a worker killed mid-job leaves its
  message unacknowledged, so RabbitMQ hands it to another worker; the node accepts only the
  attempt it published, and result UIDs come from the job key, so a second run replaces,
  never duplicates.
- Durable queues, persistent messages and publisher confirms: a broker restart loses no
  published job. Classic queues by default (``QueueType``): their prefetch of one counts per
  channel, so a worker running a job holds no second message of another plugin's queue.
- ``worker_prefetch_multiplier = 1``: a slot takes one job; the queue keeps the rest where
  any free worker can take them.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from node.jobs.remote.protocol import queue_for
from node.jobs.remote.settings import QueueType


def celery_app(broker_url: str, queue_type: QueueType = QueueType.CLASSIC) -> Celery:
    app = Celery("ainode", broker=broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # outcomes go to the node over HTTP: the job table is the record
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_detect_quorum_queues=queue_type is QueueType.QUORUM,
        task_default_delivery_mode="persistent",
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        broker_heartbeat=10,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def plugin_queue(plugin: str, queue_type: QueueType = QueueType.CLASSIC) -> Queue:
    """The durable queue of one plugin (declared alike by publisher and consumer)."""
    name = queue_for(plugin)
    arguments = {"x-queue-type": queue_type.value}
    return Queue(name, routing_key=name, durable=True, queue_arguments=arguments)
