"""The test broker itself: a crash (SIGKILL) keeps a durable queue's confirmed persistent
messages, which is what the scale-out work relies on (its plugin queues are classic durable
queues by default: a quorum queue lost confirmed messages to a SIGKILL on this RabbitMQ,
3.10, even with its registry on disk, in one run of three); two brokers run side by side."""

from __future__ import annotations

import json

import kombu
import pytest
from rabbitmq_support import RabbitMQ, epmd_names, rabbitmq, rabbitmq_module  # noqa: F401

pytestmark = pytest.mark.rabbitmq

CLASSIC = {"x-queue-type": "classic"}  # node.jobs.remote.broker.plugin_queue's default


def _queue(name: str, arguments: dict | None = None) -> kombu.Queue:
    return kombu.Queue(name, routing_key=name, durable=True, queue_arguments=arguments)


def _publish(broker: RabbitMQ, queue: kombu.Queue, bodies: list[dict]) -> None:
    """Persistent messages to the default exchange; each publish waits for the broker's
    confirm (a nack raises)."""
    with kombu.Connection(broker.url, transport_options={"confirm_publish": True}) as conn:
        producer = conn.Producer(serializer="json")
        for body in bodies:
            producer.publish(
                body, exchange="", routing_key=queue.name, declare=[queue], delivery_mode=2
            )


def _drain(broker: RabbitMQ, queue: kombu.Queue) -> list[dict]:
    """Every message now in ``queue``, acknowledged, in order."""
    bodies = []
    with kombu.Connection(broker.url) as conn:
        bound = queue(conn.default_channel)
        bound.declare()
        while (message := bound.get(no_ack=False)) is not None:
            bodies.append(json.loads(message.body))
            message.ack()
    return bodies


def test_durable_queue_survives_sigkill(rabbitmq: RabbitMQ) -> None:  # noqa: F811 - fixture
    queue = _queue("ainode.test.crash", CLASSIC)
    sent = [{"n": n, "study": f"1.2.3.{n}"} for n in range(5)]
    _publish(rabbitmq, queue, sent)  # confirmed: the broker has them on disk
    assert rabbitmq.queue_depths() == {queue.name: 5}, rabbitmq.log()

    rabbitmq.kill()
    assert not rabbitmq.running
    assert rabbitmq.name not in (epmd_names() or set())
    rabbitmq.start()

    assert rabbitmq.queue_depths() == {queue.name: 5}, rabbitmq.log()
    assert _drain(rabbitmq, queue) == sent, rabbitmq.log()
    assert rabbitmq.queue_depths() == {queue.name: 0}
    assert "ainode-test" in rabbitmq.log()


def test_two_brokers_side_by_side(
    rabbitmq_module: RabbitMQ,  # noqa: F811 - fixtures
    rabbitmq: RabbitMQ,  # noqa: F811
) -> None:
    first, second = rabbitmq_module, rabbitmq
    assert len({first.port, first.dist_port, second.port, second.dist_port}) == 4
    assert first.nodename != second.nodename
    assert first.url != second.url
    assert {first.name, second.name} <= (epmd_names() or set())

    queue = _queue("ainode.test.only-first")
    _publish(first, queue, [{"n": 1}])
    assert first.queue_depths()[queue.name] == 1
    assert queue.name not in second.queue_depths()

    second.stop()  # stopping one leaves the other alone
    assert second.name not in (epmd_names() or set())
    assert first.queue_depths() == {queue.name: 1}
    assert _drain(first, queue) == [{"n": 1}]
