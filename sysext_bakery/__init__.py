"""sysext-bakery: declarative recipes -> doit graph -> reproducible systemd-sysext images."""
