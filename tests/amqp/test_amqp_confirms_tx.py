"""Publisher confirms (confirm.select, acks by delivery tag) and transactions (tx.select,
commit, rollback)."""

import pytest

from .amqp_expect import (NOT_FOUND, PRECONDITION_FAILED, PERSISTENT, channel_closed,
                          confirmed_channel, get_all, get_bodies, publish_bodies, queue_depth,
                          wait_until)


class ConfirmRecorder:
    """Confirm mode driven through pika's asynchronous channel, so that every basic.ack and
    basic.nack the broker sends is seen with its delivery tag and multiple flag."""

    def __init__(self, connection):
        self.connection = connection
        self.channel = connection.channel()
        self.confirms = []  # the Basic.Ack / Basic.Nack methods, in arrival order
        selected = []
        self.channel._impl.confirm_delivery(ack_nack_callback=self._on_confirm,
                                            callback=selected.append)
        wait_until(connection, lambda: selected, what="confirm.select-ok")
        self.published = 0

    def _on_confirm(self, frame):
        self.confirms.append(frame.method)

    def publish(self, exchange, routing_key, body, properties=None, mandatory=False):
        self.channel._impl.basic_publish(exchange, routing_key, body, properties, mandatory)
        self.published += 1

    def confirmed_tags(self) -> dict:
        """delivery tag -> "Ack" / "Nack", with multiple=True expanded to the tags it covers."""
        tags = {}
        for method in self.confirms:
            covered = range(1, method.delivery_tag + 1) if method.multiple else [
                method.delivery_tag]
            for tag in covered:
                tags.setdefault(tag, type(method).__name__)
        return tags

    def wait_for_all(self, timeout_s=5.0) -> dict:
        wait_until(self.connection, lambda: len(self.confirmed_tags()) >= self.published,
                   timeout_s, f"confirms for {self.published} publishes")
        return self.confirmed_tags()


def test_confirms_ack_every_publish_by_delivery_tag_from_one(amqp):
    connection = amqp.connect()
    queue = amqp.name("q")
    connection.channel().queue_declare(queue, durable=True)
    recorder = ConfirmRecorder(connection)
    for i in range(50):
        recorder.publish("", queue, f"m{i}".encode(), PERSISTENT)
    tags = recorder.wait_for_all()
    assert tags == {tag: "Ack" for tag in range(1, 51)}
    # Confirms come in tag order, each covering only tags not confirmed before.
    last_tags = [m.delivery_tag for m in recorder.confirms]
    assert last_tags == sorted(set(last_tags)) and last_tags[-1] == 50
    # Once acked, the messages are in the queue for everyone to see.
    assert queue_depth(amqp.connect().channel(), queue) == 50


def test_confirm_tags_count_unroutable_and_returned_publishes_too(amqp):
    connection = amqp.connect()
    queue = amqp.name("q")
    connection.channel().queue_declare(queue, auto_delete=True)
    recorder = ConfirmRecorder(connection)
    returned = []
    recorder.channel._impl.add_on_return_callback(lambda *args: returned.append(args[1]))
    recorder.publish("", queue, b"routed")
    recorder.publish("amq.direct", amqp.name("nowhere"), b"dropped")
    recorder.publish("amq.direct", amqp.name("nowhere"), b"returned", mandatory=True)
    recorder.publish("", queue, b"routed again")
    assert recorder.wait_for_all() == {1: "Ack", 2: "Ack", 3: "Ack", 4: "Ack"}
    assert [m.reply_code for m in returned] == [312]


def test_publishes_refused_by_a_full_queue_are_nacked_by_tag(amqp):
    connection = amqp.connect()
    queue = amqp.name("full")
    connection.channel().queue_declare(queue, arguments={"x-max-length": 1,
                                                         "x-overflow": "reject-publish"})
    recorder = ConfirmRecorder(connection)
    for body in (b"fits", b"refused", b"refused too"):
        recorder.publish("", queue, body)
    assert recorder.wait_for_all() == {1: "Ack", 2: "Nack", 3: "Nack"}
    assert get_bodies(connection.channel(), queue) == [b"fits"]


def test_confirm_select_is_idempotent_and_blocking_publish_returns_after_ack(amqp):
    connection = amqp.connect()
    queue = amqp.name("q")
    channel = connection.channel()
    channel.queue_declare(queue, auto_delete=True)
    channel.confirm_delivery()
    channel._impl.confirm_delivery(ack_nack_callback=lambda _f: None)  # second confirm.select
    channel.basic_publish("", queue, b"stored", PERSISTENT)
    assert get_bodies(amqp.connect().channel(), queue) == [b"stored"]


def test_publish_to_missing_exchange_in_confirm_mode_closes_channel_not_found(amqp):
    connection = amqp.connect()
    channel = confirmed_channel(connection)
    missing = amqp.name("missing")
    with channel_closed(NOT_FOUND, f"NOT_FOUND - no exchange '{missing}' in vhost '/'"):
        channel.basic_publish(missing, "k", b"x")
    assert connection.is_open


def test_publish_to_missing_exchange_without_confirms_closes_channel_not_found(amqp):
    connection = amqp.connect()
    channel = connection.channel()
    missing = amqp.name("missing")
    channel.basic_publish(missing, "k", b"x")  # no reply to a publish: the close comes later
    with channel_closed(NOT_FOUND, f"NOT_FOUND - no exchange '{missing}' in vhost '/'"):
        channel.queue_declare("", exclusive=True)


def test_confirm_mode_and_transactions_exclude_each_other(amqp):
    connection = amqp.connect()
    transactional = connection.channel()
    transactional.tx_select()
    with channel_closed(PRECONDITION_FAILED,
                        "PRECONDITION_FAILED - cannot switch from tx to confirm mode"):
        transactional.confirm_delivery()
    confirming = connection.channel()
    confirming.confirm_delivery()
    with channel_closed(PRECONDITION_FAILED,
                        "PRECONDITION_FAILED - cannot switch from confirm to tx mode"):
        confirming.tx_select()


@pytest.mark.parametrize("method", ["tx_commit", "tx_rollback"])
def test_commit_or_rollback_without_tx_select_fails_precondition(amqp, method):
    channel = amqp.connect().channel()
    with channel_closed(PRECONDITION_FAILED,
                        "PRECONDITION_FAILED - channel is not transactional"):
        getattr(channel, method)()


def transaction_with_three_publishes_and_one_ack(amqp):
    """A queue holding m0, a transactional channel that has fetched m0 and then, inside the
    transaction, published p1..p3 and acked m0; plus an observer channel on another
    connection."""
    queue = amqp.name("tx")
    observer = amqp.connect().channel()
    observer.queue_declare(queue)
    observer.basic_publish("", queue, b"m0")
    connection = amqp.connect()
    channel = connection.channel()
    channel.tx_select()
    method, _props, body = channel.basic_get(queue)
    assert body == b"m0"
    publish_bodies(channel, "", queue, [b"p1", b"p2", b"p3"])
    channel.basic_ack(method.delivery_tag)
    # Nothing of it shows before the commit: m0 is still unacked, p1..p3 not enqueued.
    channel.basic_qos(prefetch_count=0)  # a round trip on the transactional channel
    assert queue_depth(observer, queue) == 0
    return queue, channel, observer


def test_tx_commit_applies_publishes_and_acks_together(amqp):
    queue, channel, observer = transaction_with_three_publishes_and_one_ack(amqp)
    channel.tx_commit()
    assert queue_depth(observer, queue) == 3
    channel.close()  # m0 was acked by the commit: it does not come back
    assert get_bodies(observer, queue) == [b"p1", b"p2", b"p3"]


def test_tx_rollback_discards_publishes_and_acks(amqp):
    queue, channel, observer = transaction_with_three_publishes_and_one_ack(amqp)
    channel.tx_rollback()
    assert queue_depth(observer, queue) == 0
    channel.close()  # the ack was rolled back, so m0 is unacked and returns
    wait_until(observer.connection, lambda: queue_depth(observer, queue) == 1)
    [(method, _props, body)] = get_all(observer, queue)
    assert (body, method.redelivered) == (b"m0", True)


def test_channel_stays_transactional_after_commit(amqp):
    queue = amqp.name("tx")
    observer = amqp.connect().channel()
    observer.queue_declare(queue, auto_delete=True)
    channel = amqp.connect().channel()
    channel.tx_select()
    channel.basic_publish("", queue, b"first")
    channel.tx_commit()
    channel.basic_publish("", queue, b"second")
    channel.tx_rollback()
    channel.basic_publish("", queue, b"third")
    channel.tx_commit()
    assert get_bodies(observer, queue) == [b"first", b"third"]


def test_transaction_left_open_is_rolled_back_when_the_channel_closes(amqp):
    queue = amqp.name("tx")
    observer = amqp.connect().channel()
    observer.queue_declare(queue, auto_delete=True)
    channel = amqp.connect().channel()
    channel.tx_select()
    channel.basic_publish("", queue, b"never committed")
    channel.close()
    assert queue_depth(observer, queue) == 0


def test_tx_commit_returns_only_mandatory_publishes_that_routed_nowhere(amqp):
    connection = amqp.connect()
    channel = connection.channel()
    returned = []
    channel.add_on_return_callback(lambda _ch, method, _props, body: returned.append(
        (method.reply_code, method.routing_key, body)))
    channel.tx_select()
    nowhere = amqp.name("nowhere")
    channel.basic_publish("", nowhere, b"dropped", mandatory=False)
    channel.basic_publish("", nowhere, b"returned", mandatory=True)
    channel.tx_commit()
    connection.process_data_events(time_limit=0.3)
    assert returned == [(312, nowhere, b"returned")]
