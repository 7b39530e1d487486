"""A full disk: produce gets KAFKA_STORAGE_ERROR, the broker keeps running and serving, nothing
acknowledged is lost, and the log restarts cleanly. The data directory lives on a small tmpfs
(mounting one needs root, which the test script and CI have)."""

import os
import subprocess

import pytest

from conftest import Broker
from required import missing
from kafka_wire import KafkaWire, record_batch
from librdkafka_client import create_topic, read_all, unique_name

ERROR_NONE = 0
ERROR_KAFKA_STORAGE_ERROR = 56
DISK_BYTES = 16 << 20
BATCH_VALUE_BYTES = 16 << 10


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        missing("mounting a small tmpfs needs root")
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs",
                              str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        missing(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace')}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_refuses_writes_with_storage_error_and_keeps_acknowledged_data(tmp_path,
                                                                                small_disk):
    data_dir = small_disk / "data"
    data_dir.mkdir()
    broker = Broker(data_dir, tmp_path / "sluice.log", ["--segment-bytes", str(4 << 20)])
    try:
        broker.start()
        topic = unique_name("full-disk")
        create_topic(broker.bootstrap, topic, 1)
        acknowledged = []
        refusal = None
        with KafkaWire(broker.bootstrap) as wire:
            # 4 values of 16 KiB a batch: more than the disk holds long before 400 batches.
            for batch_index in range(400):
                values = [f"{batch_index}-{i}-".encode().ljust(BATCH_VALUE_BYTES, b"x")
                          for i in range(4)]
                response = wire.produce(topic, 0, record_batch(values))
                if response.error_code != ERROR_NONE:
                    refusal = response
                    break
                acknowledged.extend(values)
            assert refusal is not None, "the disk never filled up"
            assert refusal.error_code == ERROR_KAFKA_STORAGE_ERROR, refusal
            assert acknowledged, "nothing was stored before the disk filled"
            # The same connection still works and a retry is refused the same way, not a crash.
            again = wire.produce(topic, 0, record_batch([b"y" * BATCH_VALUE_BYTES] * 4))
            assert again.error_code in (ERROR_KAFKA_STORAGE_ERROR, ERROR_NONE), again
            if again.error_code == ERROR_NONE:
                acknowledged.extend([b"y" * BATCH_VALUE_BYTES] * 4)
        assert broker.running(), broker.log_tail()

        values = [record[3] for record in read_all(broker.bootstrap, topic, 1)]
        assert values == acknowledged

        # Restart on the still-full disk: recovery must not lose or corrupt anything either.
        broker.kill9()
        broker.start()
        values = [record[3] for record in read_all(broker.bootstrap, topic, 1)]
        assert values == acknowledged
    finally:
        broker.kill9()
