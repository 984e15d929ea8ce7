"""What surrounds a cluster on Kubernetes: its pods and StatefulSets, its backup CronJobs (and the
Jobs they ran), recent Warning events, a CloudNativePG Cluster's status; and the few writes
runbooks make (a Job from a CronJob, a CNPG promotion, Leases for runbook locks).

Shaped like an engine: client (the API calls; the kubernetes library is imported inside its
functions), data (frozen rows read from the API's JSON), assess (pure judgement: severities),
plan (the objects the runbooks write) and redact (a Job as the plan and the audit log show it).
Everything the rest of dbops uses is importable from here.

Where the API is: a cluster's [kubernetes] (KubernetesRef) or [locks.kubernetes] (LeaseLocks)
names a kubeconfig and/or context; with neither, the in-cluster service account when dbops runs
in a pod (KUBERNETES_SERVICE_HOST set), else ~/.kube/config's current context.
"""

from __future__ import annotations

from dbops.platform.kubernetes.assess import assess, verdict
from dbops.platform.kubernetes.client import (
    Connection,
    cnpg_instance_pods,
    connect,
    connect_leases,
    connect_ref,
    create_job,
    create_lease,
    explain,
    get_cnpg_cluster,
    get_cronjob,
    get_job,
    get_lease,
    job_pods,
    k8s_refs,
    overview,
    patch_cnpg_status,
    pod_log,
    read_all,
    read_one,
    replace_lease,
)
from dbops.platform.kubernetes.data import (
    CNPG_GROUP,
    CNPG_HEALTHY,
    CNPG_PLURAL,
    CNPG_SWITCHOVER,
    CNPG_VERSION,
    INSTANTIATE_ANNOTATION,
    CnpgStatus,
    CronJobRow,
    EventRow,
    KubernetesError,
    KubernetesView,
    PodRow,
    StatefulSetRow,
    cnpg_status,
    job_outcome,
    last_success,
    micro_time,
    parse_time,
    pod_row,
)
from dbops.platform.kubernetes.plan import cnpg_promotion_patch, job_from_cronjob, manual_job_name
from dbops.platform.kubernetes.redact import redacted_job

__all__ = [
    "CNPG_GROUP",
    "CNPG_HEALTHY",
    "CNPG_PLURAL",
    "CNPG_SWITCHOVER",
    "CNPG_VERSION",
    "INSTANTIATE_ANNOTATION",
    "CnpgStatus",
    "Connection",
    "CronJobRow",
    "EventRow",
    "KubernetesError",
    "KubernetesView",
    "PodRow",
    "StatefulSetRow",
    "assess",
    "cnpg_instance_pods",
    "cnpg_promotion_patch",
    "cnpg_status",
    "connect",
    "connect_leases",
    "connect_ref",
    "create_job",
    "create_lease",
    "explain",
    "get_cnpg_cluster",
    "get_cronjob",
    "get_job",
    "get_lease",
    "job_from_cronjob",
    "job_outcome",
    "job_pods",
    "k8s_refs",
    "last_success",
    "manual_job_name",
    "micro_time",
    "overview",
    "parse_time",
    "patch_cnpg_status",
    "pod_log",
    "pod_row",
    "read_all",
    "read_one",
    "redacted_job",
    "replace_lease",
    "verdict",
]
