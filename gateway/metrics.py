"""Metrics: the gateway's Prometheus series, on a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sessions = Gauge(
            "gateway_sessions", "Live sessions", registry=self.registry
        )
        self.executes = Counter(
            "gateway_executes", "Executed cells by result status", ["status"],
            registry=self.registry,
        )
        self.execute_seconds = Histogram(
            "gateway_execute_seconds", "Execute latency, request to result",
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.kernel_starts = Counter(
            "gateway_kernel_starts", "Kernels started", ["launcher"], registry=self.registry
        )
        self.kernel_start_seconds = Histogram(
            "gateway_kernel_start_seconds", "Kernel start to first reply",
            buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30), registry=self.registry,
        )
        self.kernel_deaths = Counter(
            "gateway_kernel_deaths", "Kernels that died on their own", ["reason"],
            registry=self.registry,
        )
        self.kernel_messages_rejected = Counter(
            "gateway_kernel_messages_rejected",
            "Kernel messages dropped at the gateway's door (too large, too deep, malformed)",
            ["reason"], registry=self.registry,
        )
        self.reaped = Counter(
            "gateway_sessions_reaped", "Sessions removed by the reaper", ["why"],
            registry=self.registry,
        )
        self.hibernations = Counter(
            "gateway_hibernations", "Sessions hibernated (ok) or not (error)", ["outcome"],
            registry=self.registry,
        )
        self.restores = Counter(
            "gateway_restores", "Hibernated sessions restored, by status", ["status"],
            registry=self.registry,
        )

        self.pool_size = Gauge("gateway_pool_size", "Started kernels waiting in the warm pool",
                               registry=self.registry)
        self.pool_hits = Counter("gateway_pool_hits", "Sessions given a pooled kernel",
                                 registry=self.registry)
        self.pool_misses = Counter("gateway_pool_misses", "Kernel starts the pool could not serve",
                                   registry=self.registry)

        self.replica_links = Gauge(
            "gateway_replica_links", "Replica links other replicas hold open to this one",
            registry=self.registry)
        self.forwarded = Counter(
            "gateway_forwarded_calls", "REST calls forwarded to the replica serving the session, "
            "by outcome", ["outcome"],  # answered / misdirected / down / unreachable
            registry=self.registry)

        self.file_bytes = Counter(
            "gateway_file_bytes", "Bytes through the files API", ["direction"],  # up / down
            registry=self.registry)
        self.workspace_bytes = Gauge(
            "gateway_workspace_bytes", "Space a session's workspace uses (at its last cell or "
            "file call)", ["owner", "session_id"], registry=self.registry)
        self.quota_hits = Counter(
            "gateway_workspace_quota_hits", "Writes refused because a workspace was full",
            ["source"], registry=self.registry)  # upload / cell

        self.package_jobs = Counter(
            "gateway_package_jobs", "Package install jobs ended, by status", ["status"],
            registry=self.registry)
        self.package_download_bytes = Counter(
            "gateway_package_download_bytes", "Bytes of wheels downloaded into the wheel cache",
            registry=self.registry)
        self.package_cache_hits = Counter(
            "gateway_package_cache_hits", "Wheels a job found in the cache (no download)",
            registry=self.registry)
        self.package_cache_misses = Counter(
            "gateway_package_cache_misses", "Wheels a job had to download",
            registry=self.registry)

    def forget_workspace(self, owner: str, session_id: str) -> None:
        """Drop a removed session's workspace gauge (labels must not pile up)."""
        try:
            self.workspace_bytes.remove(owner, session_id)
        except KeyError:
            pass

    def render(self) -> bytes:
        return generate_latest(self.registry)
