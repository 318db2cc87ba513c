"""The node agent: plays the kubelet for the local cluster by running each pod's containers
as local processes (runtime ``process``, the default) or in their images with podman
(runtime ``podman``: ``voicetrack local up --runtime podman``; see :mod:`.podman` and
docs/local-cluster.md).

What it does (the kubelet behaviour it follows is cited from kubernetes.io/docs/concepts/
workloads/pods/pod-lifecycle/ and the kubelet's ``pkg/kubelet/kubelet_pods.go``):

* registers Node :data:`voicetrack_local.cluster.NODE_NAME` (Ready, capacity from this
  machine, ``InternalIP 127.0.0.1``, ``daemonEndpoints.kubeletEndpoint.Port``) and renews its
  Lease in ``kube-node-lease`` every 10 s (the node controller marks a node Unknown after
  ``--node-monitor-grace-period``, 50 s, without a renewal it saw), retrying a failed renewal
  within seconds; every heartbeat also reads the Node back and re-posts its status at once
  when it is not Ready (as the kubelet does every ``nodeStatusUpdateFrequency``), else every
  60 s;
* lists and watches the pods bound to it (``spec.nodeName``), re-listing after watch
  time-outs, ``410 Gone`` and connection errors; one worker thread per pod, so no pod
  blocks another;
* per pod: a private directory ``<state>/agent/pods/<ns>_<name>_<uid>/`` (cwd of every
  container; ``volumes/<name>/`` for emptyDir, configMap, secret, projected and downwardAPI
  volumes, a symlink to the bound PersistentVolume's hostPath/local directory for a
  persistentVolumeClaim volume (a container mounting one runs in a private mount namespace
  with it bind-mounted at its ``mountPath``, see :mod:`.volumes`); ``TMPDIR`` is the
  emptyDir mounted at ``/tmp``, else the first emptyDir the container mounts, else
  ``tmp/``), a kubeconfig holding a TokenRequest token bound to the pod for its
  ServiceAccount (``KUBECONFIG``), env from ``value`` (with ``$(VAR)``
  expansion), ``secretKeyRef``, ``configMapKeyRef``, ``fieldRef``, ``resourceFieldRef`` and
  ``envFrom``; ``VOICETRACK_TERMINATION_LOG`` names the host file standing for the
  container's ``terminationMessagePath`` (``termination/<container>``, emptied before every
  run);  ``PATH`` starts with the directory of this agent's Python (the venv's
  ``bin``, where the ``voicetrack-*`` console scripts are).  Init containers run in order,
  then all containers at once; command + args are run (the image is ignored; a container
  without ``command`` waits with ``CreateContainerError``), stdout and stderr go to
  ``logs/<container>/<restartCount>.log``;
* status: phase Pending → Running → Succeeded/Failed, containerStatuses (waiting /
  running / terminated with exitCode, reason ``Completed``/``Error``/``StartError``,
  restartCount, lastState; the termination message from that file, or with
  ``terminationMessagePolicy: FallbackToLogsOnError`` after a failure the log's tail),
  conditions (PodReadyToStartContainers, Initialized,
  ContainersReady, Ready: every container started and past its readiness probe);
* probes (:mod:`.probes`, both runtimes): startupProbe, livenessProbe (failure: the
  container is stopped and restarts per restartPolicy) and readinessProbe, with httpGet,
  tcpSocket or exec handlers;
* restartPolicy Always/OnFailure/Never with the kubelet's back-off (10 s doubling to 5 min),
  ``activeDeadlineSeconds`` (Failed, reason DeadlineExceeded), graceful deletion: SIGTERM
  to each container's main process, SIGKILL to its process group after the pod's
  ``deletionGracePeriodSeconds``, terminal phase reported, then the final delete
  (``gracePeriodSeconds=0`` with a uid precondition);
* serves ``GET /containerLogs/<ns>/<pod>/<container>`` (``follow``, ``tailLines``,
  ``previous``, ``limitBytes``) and ``/exec`` (WebSocket) over HTTPS with a CA-signed
  cert, requiring a client certificate from the cluster CA (the apiserver's kubelet client
  cert), so ``kubectl logs`` and ``kubectl exec`` work.

With the podman runtime, each container runs as ``podman run`` of its image from local
storage (``localhost/…`` first; imagePullPolicy honoured: ``ErrImageNeverPull``,
``ErrImagePull``/``ImagePullBackOff``), its command/args as entrypoint/CMD, its security
context (runAsUser/Group, runAsNonRoot, readOnlyRootFilesystem, capabilities,
allowPrivilegeEscalation, privileged), every volume bind-mounted at its ``mountPath``
(read-only for secret, configMap, downwardAPI, projected; an emptyDir with ``sizeLimit``
mounted by one container is a tmpfs of that size), the termination-message file at
``terminationMessagePath``, memory and CPU limits as cgroup limits, on the host network
with ``KUBERNETES_SERVICE_HOST``/``PORT`` pointing at the API server (127.0.0.1), so the
in-cluster configuration works unchanged.

``kubectl exec`` (both runtimes) is served over WebSocket (:mod:`.execstream`): the node
declares ``ExtendWebSocketsToKubelet``, so v1.36's API server proxies the stream to it.

Not done (documented limits): TTYs, SPDY exec, attach, port-forward, OOMKilled and
StartError reasons under podman (its exit code is reported), network isolation (every pod
shares the host network; each has a loopback address of its own as its pod IP, from
:mod:`.podips` (collision-free across the cluster's agents, kept across agent restarts), so
replicas that bind their ``$(POD_IP)`` do not clash on ports), with
the process runtime images, resource limits and service environment variables (in-cluster
clients there use ``KUBECONFIG``) and mount paths other than a claim's (programs find their
files through cwd/TMPDIR); volumes other than the above.

The agent talks to the API with the admin kubeconfig of the state directory (a node
identity with NodeRestriction is not needed for a single-user local cluster).
Run: ``python -m voicetrack_local.nodeagent --state-dir DIR`` (``voicetrack local up`` does).

Modules: :mod:`.agent` (the process, the pod watch), :mod:`.node` (Node and Lease),
:mod:`.worker` (one thread per pod) with :mod:`.runs` (a container's start and exit) and
:mod:`.termination` (deadline, deletion, shutdown), :mod:`.container` (a container's process
and state),
:mod:`.podman` (the podman runtime) with its pure :mod:`.podmanargs` (``podman run``
arguments), :mod:`.probes` (probe counters and handlers), :mod:`.execstream` (exec),
:mod:`.sandbox` (a pod's directory, token, volumes), pure :mod:`.podspec` (environment),
:mod:`.volumes` (volume plans), :mod:`.podips` (pod IPs) and :mod:`.podstatus` (phase,
container statuses, termination messages), :mod:`.kube` (API access), :mod:`.logs` (the
kubelet endpoint).
"""

from voicetrack_local.nodeagent.agent import NodeAgent, main
from voicetrack_local.nodeagent.container import Container
from voicetrack_local.nodeagent.kube import Kube, now_iso, now_micro, parse_time
from voicetrack_local.nodeagent.podspec import (
    ConfigError,
    container_env,
    expand,
    field_value,
    quantity,
)
from voicetrack_local.nodeagent.podstatus import pod_phase, pod_status, termination_message
from voicetrack_local.nodeagent.volumes import plan_volumes
from voicetrack_local.nodeagent.worker import PodWorker

__all__ = [
    "ConfigError",
    "Container",
    "Kube",
    "NodeAgent",
    "PodWorker",
    "container_env",
    "expand",
    "field_value",
    "main",
    "now_iso",
    "now_micro",
    "parse_time",
    "plan_volumes",
    "pod_phase",
    "pod_status",
    "quantity",
    "termination_message",
]
