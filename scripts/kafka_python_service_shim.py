"""Stand-in for kafka-python's `test/service.py`, which its PyPI sdist does not ship.

The upstream integration fixtures import `ExternalService` and `SpawnedService` from it. Against an
external broker (KAFKA_URI set) only `ExternalService` is constructed; `SpawnedService` would launch
a local Apache Kafka from KAFKA_ROOT, which this suite never does, so it refuses loudly.
"""


class ExternalService:
    def __init__(self, host, port):
        self.host = host
        self.port = port

    def open(self):
        pass

    def close(self):
        pass

    def stop(self):
        pass

    def dump_logs(self):
        pass

    def wait_for(self, pattern, timeout=30):
        return True


class SpawnedService:
    def __init__(self, args=None, env=None):
        raise RuntimeError(
            "SpawnedService is not available: the Sluice suite runs kafka-python's "
            "integration tests against an external broker only (set KAFKA_URI)"
        )
