"""Where the lab lives and which ports it uses: the one place that decides both."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_ROOT = Path(os.environ.get("KNOWNGOOD_LAB_DIR", "/var/lib/knowngood-lab"))
DEFAULT_BASE_PORT = int(os.environ.get("KNOWNGOOD_LAB_BASE_PORT", "25000"))
PG_BIN = Path(os.environ.get("KNOWNGOOD_PG_BIN", "/usr/lib/postgresql/15/bin"))


@dataclass(frozen=True)
class LabConfig:
    """Everything needed to rebuild the lab's layout; saved as <root>/lab.json."""

    root: Path = DEFAULT_ROOT
    hosts: int = 3
    ssh: bool = False
    base_port: int = DEFAULT_BASE_PORT
    name: str = "kglab"
    extra: dict = field(default_factory=dict)

    # Port plan, all offsets from base_port, so two labs never clash when bases differ by 1000.
    @property
    def lb_port(self) -> int:
        return self.base_port + 80

    @property
    def maintenance_port(self) -> int:
        """The load balancer's maintenance backend: answers 503 while writes are stopped."""
        return self.base_port + 81

    @property
    def prometheus_port(self) -> int:
        return self.base_port + 90

    @property
    def pg_primary_port(self) -> int:
        return self.base_port + 432

    @property
    def pg_standby_port(self) -> int:
        return self.base_port + 433

    @property
    def flag_service_port(self) -> int:
        return self.base_port + 70

    def s3_ports(self, region_index: int) -> dict[str, int]:
        """weed mini needs several ports per region; each region gets a block of 20.

        gRPC ports too stay inside the block (weed's own habit is port + 10000): with the
        default bases that would land in Linux's ephemeral range (32768+), where an outgoing
        connection can hold the port when the lab starts.
        """
        start = self.base_port + 500 + 20 * region_index
        return {
            "s3": start,
            "master": start + 1,
            "volume": start + 2,
            "filer": start + 3,
            "webdav": start + 4,
            "admin": start + 5,
            "master_grpc": start + 11,
            "volume_grpc": start + 12,
            "filer_grpc": start + 13,
            "s3_grpc": start + 14,
            "admin_grpc": start + 15,
        }

    def app_ports(self, index: int) -> dict[str, int]:
        """Each app host runs a blue and a green instance."""
        start = self.base_port + 100 + 2 * index
        return {"blue": start, "green": start + 1}

    def host_name(self, index: int) -> str:
        return f"app{index + 1}"

    def host_address(self, index: int) -> str:
        # 127.0.1.x keeps clear of 127.0.0.1 services; every address in 127/8 is loopback.
        return f"127.0.1.{index + 1}" if self.ssh else "127.0.0.1"

    def host_root(self, index: int) -> Path:
        return self.root / "hosts" / self.host_name(index)

    @property
    def ssh_port(self) -> int:
        return 22

    @property
    def pg_dir(self) -> Path:
        return self.root / "postgres"

    @property
    def wal_archive_dir(self) -> Path:
        return self.root / "postgres" / "wal_archive"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def inventory_path(self) -> Path:
        return self.root / "inventory" / "hosts.yml"

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        data["root"] = str(self.root)
        (self.root / "lab.json").write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, root: Path = DEFAULT_ROOT) -> LabConfig:
        data = json.loads((Path(root) / "lab.json").read_text())
        data["root"] = Path(data["root"])
        return cls(**data)
