"""Differential AMQP 0-9-1 tests (RabbitMQ vs Sluice); see conftest.py.

A package, so that its conftest is `amqp.conftest` and does not shadow tests/conftest.py, which
other test modules import as `conftest`."""
