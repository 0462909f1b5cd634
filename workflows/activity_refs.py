"""The activity classes the workflows schedule, gathered in one module for the sandbox.

Workflow code needs only the activities' names and signatures (for
workflow.execute_activity_method). Every import statement in a workflow module runs
through the sandbox's importer again for every run; importing these from one module,
under workflow.unsafe.imports_passed_through(), costs one such pass instead of one per
activity module (docs/PERFORMANCE.md). The activity modules themselves are imported by
the worker outside the sandbox, where their I/O libraries belong.
"""

from activities.activation import ActivationActivities
from activities.admission import AdmissionActivities
from activities.audit import AuditActivities
from activities.credentials import CredentialsActivities
from activities.deprovision import DeprovisionActivities
from activities.final_snapshot import FinalSnapshotActivities
from activities.mailu import MailuActivities
from activities.notify import NotifyActivities
from activities.plan_change import PlanChangeActivities
from activities.rotation_schedule import RotationScheduleActivities
from activities.ssh import SshTrustActivities
from activities.temporal_runs import TemporalRunsActivities
from activities.tenant_claims import TenantClaimActivities
from activities.vault import VaultActivities
from activities.vps_provider import VpsActivities
from activities.world import WorldActivities

__all__ = [
    "ActivationActivities",
    "AdmissionActivities",
    "AuditActivities",
    "CredentialsActivities",
    "DeprovisionActivities",
    "FinalSnapshotActivities",
    "MailuActivities",
    "NotifyActivities",
    "PlanChangeActivities",
    "RotationScheduleActivities",
    "SshTrustActivities",
    "TemporalRunsActivities",
    "TenantClaimActivities",
    "VaultActivities",
    "VpsActivities",
    "WorldActivities",
]
