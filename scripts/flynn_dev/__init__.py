"""Development harness: the appliance image builder and the systemd-nspawn test cluster.

Not part of the flynn distribution installed on hosts; run from the repository by scripts/cluster,
scripts/up and the test suite. Standard library only, so it runs on a bare Debian python3.
"""
