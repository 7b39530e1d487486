"""kcat, the command-line Kafka client most operators reach for, works against Sluice unchanged:
metadata listing, keyed produce with acks=all, and consuming everything back."""

import shutil
import subprocess

import pytest

from librdkafka_client import unique_name
from required import missing

KCAT = shutil.which("kcat")


@pytest.fixture(autouse=True)
def kcat_installed():
    if KCAT is None:
        missing("kcat is not installed (scripts/test installs it)")


def kcat(*args, stdin=None, timeout_s=60):
    completed = subprocess.run([KCAT, *args], input=stdin, capture_output=True, timeout=timeout_s)
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    return completed.stdout.decode()


def test_kcat_produces_keyed_messages_and_reads_them_back_in_order(kafka):
    topic = unique_name("kcat")
    lines = [f"key-{i % 7}:value-{i}" for i in range(1000)]
    kcat("-b", kafka.bootstrap, "-P", "-t", topic, "-p", "0", "-K", ":", "-X", "acks=all",
         stdin=("\n".join(lines) + "\n").encode())

    consumed = kcat("-b", kafka.bootstrap, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-e",
                    "-f", "%k:%s\n").splitlines()
    assert consumed == lines

    listing = kcat("-b", kafka.bootstrap, "-L", "-t", topic)
    assert f'topic "{topic}" with 1 partitions' in listing
