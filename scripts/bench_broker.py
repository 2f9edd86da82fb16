"""A `runnel serve` for the Python benchmark scripts: free loopback ports, a config in a new
temporary directory, QUIC off, the broker's log in `<work>/broker.log`.

    with Broker(runnel, "runnel-x-", broker='max_fetch_sessions = 0') as b:
        ... b.bootstrap, b.admin_port, b.pid, b.work, b.log_path ...
"""
import os
import socket
import subprocess
import tempfile


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """Started on entry, stopped (SIGTERM, then waited for) on exit. `broker` and `log` are
    extra lines for the config's [broker] and [log] tables."""

    def __init__(self, runnel, prefix, broker="", log=""):
        self.kafka_port, self.admin_port = free_port(), free_port()
        self.bootstrap = f"127.0.0.1:{self.kafka_port}"
        self.work = tempfile.mkdtemp(prefix=prefix)
        self.log_path = os.path.join(self.work, "broker.log")
        config = os.path.join(self.work, "runnel.toml")
        with open(config, "w") as f:
            f.write(f'[broker]\ndata_dir = "{self.work}/data"\n{broker}\n'
                    f'[listeners.kafka]\naddress = "{self.bootstrap}"\n'
                    f'[listeners.quic]\nenabled = false\n'
                    f'[listeners.admin]\naddress = "127.0.0.1:{self.admin_port}"\n'
                    f'[log]\n{log}\n')
        self.process = subprocess.Popen([runnel, "serve", "--config", config],
                                        stdout=subprocess.DEVNULL,
                                        stderr=open(self.log_path, "w"))
        self.pid = self.process.pid

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.process.terminate()
        self.process.wait()
