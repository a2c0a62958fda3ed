"""Test and benchmark scaffolding (not shipped: the wheel installed on hosts holds ``kit`` only).

``devkit.localstack`` starts the kit's services on loopback for tests/ and bench/.
"""
