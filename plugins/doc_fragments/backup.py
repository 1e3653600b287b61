# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup configuration every backup module takes (one source: module_utils/_backup/module)."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  config:
    description:
      - The cluster's backup configuration, the same dict for every backup module and for the
        WAL tool (inventory variable C(knowngood_backup) in the runbooks).
      - Unset keys take the defaults named below.
    type: dict
    required: true
    suboptions:
      cluster:
        description: Cluster name; every key in every location starts with it.
        type: str
        required: true
      engine:
        description: C(native) needs only PostgreSQL; C(pgbackrest) drives a site's pgBackRest.
        type: str
        choices: [native, pgbackrest]
      pg:
        description: How to reach the cluster (superuser over TCP) and where it lives.
        type: dict
        suboptions:
          host:
            description: Host or socket directory. Default C(127.0.0.1).
            type: str
          port:
            description: Port. Default C(5432).
            type: int
          user:
            description: Superuser (or a role with pg_backup_start rights). Default C(postgres).
            type: str
          dbname:
            description: Database to connect to. Default C(postgres).
            type: str
          data_dir:
            description: Data directory (incremental backups and restores read and write it).
            type: path
          bin_dir:
            description: PostgreSQL binaries. Default C(/usr/lib/postgresql/15/bin).
            type: path
          os_user:
            description: OS user PostgreSQL runs as. Default C(postgres).
            type: str
      compression:
        description: Compression of every stored file and WAL segment. Default C(lz4).
        type: str
        choices: [lz4, zstd, none]
      compression_level:
        description: Compression level. Default C(1).
        type: int
      parallel:
        description: Worker threads for compression, uploads and restores. Default C(2).
        type: int
      spool_dir:
        description: WAL prefetch queue, pending copies and backup staging.
        type: path
      catalog_dir:
        description: Local mirror of the catalog with verification history.
        type: path
      wal_prefetch:
        description: Segments C(restore_command) fetches ahead. Default C(8).
        type: int
      retries:
        description: Retries with jittered backoff for transient location errors.
        type: dict
        suboptions:
          attempts:
            description: Attempts per operation. Default C(4).
            type: int
          base_delay:
            description: First delay in seconds. Default C(0.5).
            type: float
          max_delay:
            description: Longest delay in seconds. Default C(8).
            type: float
      retention:
        description: What expiry keeps.
        type: dict
        suboptions:
          full:
            description: Full backups kept at least. Default C(2).
            type: int
          window_days:
            description: Any point inside this many days stays restorable. Default C(7).
            type: float
      freshness:
        description: Freshness policy the verification judges against.
        type: dict
        suboptions:
          full_hours:
            description: Newest full backup at most this old. Default C(26).
            type: float
          incremental_hours:
            description: Newest backup of any type at most this old. Default C(2).
            type: float
          wal_minutes:
            description: Newest archived WAL at most this old. Default C(10).
            type: float
      locations:
        description: Where backups and WAL go; all of them, every time.
        type: list
        elements: dict
        required: true
        suboptions:
          name:
            description: Location name, lower case.
            type: str
            required: true
          type:
            description: C(local) and C(export) are directories (export is removable media
              with a signed manifest); C(s3) is any S3 API.
            type: str
            required: true
            choices: [local, s3, export]
          path:
            description: Directory of a C(local) or C(export) location.
            type: path
          endpoint_url:
            description: S3 endpoint; empty for AWS.
            type: str
          region:
            description: S3 region.
            type: str
          bucket:
            description: S3 bucket.
            type: str
          prefix:
            description: Key prefix inside the bucket.
            type: str
          access_key:
            description: S3 access key.
            type: str
          secret_key:
            description: S3 secret key.
            type: str
          storage_class:
            description: S3 storage class for cold storage, for example C(GLACIER).
            type: str
          object_lock_days:
            description: When above 0, every object is written with Object Lock in compliance
              mode for this many days.
            type: int
          encrypt:
            description: Encrypt copies in this location (default true for C(s3) and C(export)).
            type: bool
          required:
            description: A push or backup is complete only when every required location has it.
            type: bool
      pgbackrest_stanza:
        description: Stanza for the C(pgbackrest) engine.
        type: str
      pgbackrest_config:
        description: Path of the pgbackrest.conf the engine writes and uses.
        type: path
      pgbackrest_repos:
        description: Repositories for the C(pgbackrest) engine, C(repoN) in order.
        type: list
        elements: dict
        suboptions:
          type:
            description: Repository type.
            type: str
            choices: [posix, s3]
          path:
            description: Repository path.
            type: str
          endpoint:
            description: S3 endpoint.
            type: str
          bucket:
            description: S3 bucket.
            type: str
          region:
            description: S3 region.
            type: str
          key:
            description: S3 access key.
            type: str
          key_secret:
            description: S3 secret key.
            type: str
          uri_style:
            description: S3 URI style.
            type: str
          verify_tls:
            description: Verify the S3 endpoint's TLS certificate.
            type: bool
          storage_port:
            description: S3 port.
            type: int
      notify:
        description:
          - Where the WAL tool announces a scheduled backup or restore test that failed, WAL
            archiving that fails and a location whose copies start to queue (the archive falls
            behind there), once per failed run and once per archiving failure (not per retry).
            The runbooks' channels and contacts; empty, only the metrics tell.
        type: dict
        suboptions:
          channels:
            description: C(knowngood_notify) (webhooks, smtp, attempts, timeout_s, backoff_s).
            type: dict
          contacts:
            description: C(knowngood_contacts) (primary_oncall, secondary_oncall, infra_lead).
            type: dict
          smtp_password:
            description: Password of the SMTP relay (vaulted).
            type: str
  encryption_key:
    description: Passphrase for locations with C(encrypt=true); from a vaulted variable.
    type: str
  signing_key:
    description: Key of the HMAC-SHA256 signature over export manifests.
    type: str
  progress_file:
    description:
      - Where a long step (a backup, a restore, WAL replay) reports its progress while it
        runs, as JSON replaced atomically (phase, done and total in bytes or segments,
        elapsed, estimate of the time left). Steps that do not take long ignore it.
      - The collection's action plugins for M(knowngood.runbooks.pg_backup),
        M(knowngood.runbooks.pg_pitr) and M(knowngood.runbooks.backup_verify) set it and print
        the progress; there is no need to set it by hand.
    type: path
"""
