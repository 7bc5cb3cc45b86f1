#!/usr/bin/env python3
"""Assertions over rendered overlays (run by ./check): check-rendered.py OVERLAY=FILE ...

For every overlay:
  - every pod spec (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob) meets the
    Pod Security Standard "restricted" (the baseline controls included), as the API server's
    admission would judge it: no host namespaces, ports or hostPath, not privileged, no added
    capability but NET_BIND_SERVICE, capabilities drop ALL, allowPrivilegeEscalation false,
    runAsNonRoot and no uid 0, seccomp RuntimeDefault or Localhost, only the allowed volume
    types, safe sysctls, default /proc mount, no unconfined AppArmor, no custom SELinux user;
  - and Haven's own rules on top: read-only root file system, no ServiceAccount token, images
    by digest (deploy/image/policy refuses anything else), CPU and memory requests and limits,
    startup, liveness and readiness probes on long-running containers, secrets only as files
    (no secretKeyRef, no envFrom secretRef), Secret volumes not world-readable;
  - the pods' namespace exists in the render and enforces "restricted";
  - a default-deny NetworkPolicy exists: podSelector {} (every pod), policyTypes Ingress and
    Egress, no rules;
  - no RoleBinding gives a Haven ServiceAccount anything, and no Role grants wildcards,
    Secrets or pods/exec;
  - every Haven container's environment passes the binary's start-up refusals: plain HTTP
    beyond loopback only with HAVEN_BEHIND_GATEWAY, HAVEN_TRUSTED_PROXIES and an https public
    URL (or [tls]); PGSSLMODE, when set, is verify-full;
  - references resolve: Ingress -> Service and port, Service -> pods, HPA -> workload,
    PodDisruptionBudget and NetworkPolicy -> pods, envFrom -> ConfigMap, serviceAccountName ->
    ServiceAccount, storage classes (claim templates, PersistentVolumeClaims, database volumes)
    -> an encrypting StorageClass, a pod's claims -> PersistentVolumeClaims, certificate issuers;
  - what each overlay promises: one SQLite replica on single-node, and no CronJob (the data is
    on the StatefulSet's ReadWriteOnce volume: backups run in its pod); fhir and identity
    Deployments with autoscaler and disruption budget, the migration Job, the nightly backup
    CronJob (never two at once, bounded in time, on an encrypted claim), and a three-instance
    CloudNativePG Cluster with TLS and WAL archiving in production; STRICT mTLS and an
    AuthorizationPolicy per meshed workload with Istio.

Custom resources (cert-manager, CloudNativePG, Istio) have no schema in kubernetes-validate; the
fields Haven relies on are asserted here instead.

Before trusting a pass, the script shows that its checks can fail: each restricted control is
broken in turn on a copy of a rendered pod spec and must be reported, and so must policies that
are not default-deny.
"""
import copy
import os
import re
import sys

import yaml

# --- Pod Security Standards (https://kubernetes.io/docs/concepts/security/pod-security-standards/)
RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
DIGEST = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")
# StorageClass parameters by which a CSI driver encrypts volumes at rest: AWS EBS and Ceph RBD
# (encrypted: "true"), GKE persistent disk (a KMS key), Azure disk (a disk encryption set).
ENCRYPTION_PARAMETERS = {"disk-encryption-kms-key", "diskEncryptionSetID"}
WORKLOAD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}
CLUSTER_SCOPED = {"Namespace", "StorageClass", "ClusterRole", "ClusterRoleBinding", "ClusterIssuer"}


def pod_template(doc):
    """(pod metadata, pod spec) of a workload, or None."""
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    if kind == "Pod":
        return doc.get("metadata") or {}, spec
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec") or {})
    if kind in WORKLOAD_KINDS:
        t = spec.get("template") or {}
        return t.get("metadata") or {}, t.get("spec") or {}
    return None


def containers(spec):
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(key) or []:
            yield key, c


def restricted_violations(meta, spec):
    """Every Pod Security "restricted" (and baseline) violation of one pod spec."""
    v = []
    psc = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            v.append(f"{field}: true")
    for vol in spec.get("volumes") or []:
        types = set(vol) - {"name"}
        if "hostPath" in types:
            v.append(f"volume {vol.get('name')}: hostPath")
        elif not types <= RESTRICTED_VOLUME_TYPES:
            v.append(f"volume {vol.get('name')}: type {sorted(types)} not allowed")
    for s in psc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            v.append(f"sysctl {s.get('name')} is not a safe sysctl")
    if psc.get("runAsUser") == 0:
        v.append("pod runAsUser: 0")
    pod_nonroot = psc.get("runAsNonRoot") is True
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        v.append(f"pod seccompProfile {pod_seccomp}")
    for where in [psc] + [c.get("securityContext") or {} for _, c in containers(spec)]:
        se = where.get("seLinuxOptions") or {}
        if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
            v.append(f"seLinuxOptions {se}")
        if (where.get("appArmorProfile") or {}).get("type") == "Unconfined":
            v.append("appArmorProfile Unconfined")
        if (where.get("windowsOptions") or {}).get("hostProcess"):
            v.append("windowsOptions.hostProcess")
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and value == "unconfined":
            v.append(f"annotation {key}: unconfined")
    for key, c in containers(spec):
        name = f"{key[:-1]} {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            v.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            v.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            v.append(f"{name}: capabilities do not drop ALL")
        extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if extra:
            v.append(f"{name}: adds capabilities {sorted(extra)}")
        if sc.get("runAsNonRoot") is False or not (pod_nonroot or sc.get("runAsNonRoot") is True):
            v.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0:
            v.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            v.append(f"{name}: seccompProfile is {seccomp}")
        if sc.get("procMount", "Default") != "Default":
            v.append(f"{name}: procMount {sc.get('procMount')}")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                v.append(f"{name}: hostPort {p['hostPort']}")
    return v


def haven_violations(kind, spec):
    """Haven's rules beyond "restricted"."""
    v = []
    if spec.get("automountServiceAccountToken") is not False:
        v.append("automountServiceAccountToken is not false")
    if spec.get("serviceAccountName") in (None, "", "default"):
        v.append("runs as the default ServiceAccount")
    long_running = kind not in ("Job", "CronJob")
    for key, c in containers(spec):
        name = f"{key[:-1]} {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("readOnlyRootFilesystem") is not True:
            v.append(f"{name}: readOnlyRootFilesystem is not true")
        if not DIGEST.match(c.get("image", "")):
            v.append(f"{name}: image {c.get('image')!r} is not pinned by digest")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(part) or {}):
                    v.append(f"{name}: no {r} {part[:-1]}")
        if long_running and key == "containers":
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe not in c:
                    v.append(f"{name}: no {probe}")
        for e in c.get("env") or []:
            if "secretKeyRef" in (e.get("valueFrom") or {}):
                v.append(f"{name}: secret {e['name']} as an environment variable (mount it as a file)")
        for e in c.get("envFrom") or []:
            if "secretRef" in e:
                v.append(f"{name}: envFrom a Secret (mount it as a file)")
    for vol in spec.get("volumes") or []:
        if "secret" in vol and (vol["secret"].get("defaultMode", 0o644) & 0o007):
            v.append(f"volume {vol['name']}: Secret files readable by others (defaultMode)")
    return v


def haven_startup_violations(env):
    """What `haven` would refuse at start-up in this environment (crates/haven/src/config.rs
    validate_listen, hops.rs): plain HTTP beyond loopback only behind a declared gateway; a
    database URL read from a file is checked by Haven itself, so here only PGSSLMODE, when set,
    must be verify-full."""
    v = []
    listen = env.get("HAVEN_LISTEN", "127.0.0.1:8080")
    host = listen.rsplit(":", 1)[0].strip("[]")
    loopback = host == "localhost" or host.startswith("127.") or host == "::1"
    if not loopback and not env.get("HAVEN_TLS__CERT_FILE"):
        if (env.get("HAVEN_BEHIND_GATEWAY") or "").lower() != "true":
            v.append(f"HAVEN_LISTEN={listen} in plain HTTP without HAVEN_BEHIND_GATEWAY=true or [tls]")
        if not (env.get("HAVEN_TRUSTED_PROXIES") or "").strip():
            v.append("HAVEN_BEHIND_GATEWAY needs HAVEN_TRUSTED_PROXIES (the gateway)")
        if not (env.get("HAVEN_PUBLIC_URL") or "").startswith("https://"):
            v.append("HAVEN_BEHIND_GATEWAY needs an https:// HAVEN_PUBLIC_URL")
    if "PGSSLMODE" in env and env["PGSSLMODE"] != "verify-full":
        v.append(f"PGSSLMODE={env['PGSSLMODE']}: Haven accepts only verify-full for a remote database")
    return v


def is_default_deny(np):
    spec = np.get("spec") or {}
    selector = spec.get("podSelector")
    every_pod = selector is not None and not (selector.get("matchLabels") or selector.get("matchExpressions"))
    return (every_pod and {"Ingress", "Egress"} <= set(spec.get("policyTypes") or [])
            and not spec.get("ingress") and not spec.get("egress"))


def selects(selector, labels):
    """Whether a label selector (matchLabels/matchExpressions) selects these labels."""
    if selector is None:
        return False
    for k, val in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != val:
            return False
    for e in selector.get("matchExpressions") or []:
        has, val = e["key"] in labels, labels.get(e["key"])
        op = e["operator"]
        if (op == "In" and val not in e["values"]) or (op == "NotIn" and val in e["values"]) \
                or (op == "Exists" and not has) or (op == "DoesNotExist" and has):
            return False
    return True


class Checker:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, what, problems):
        problems = [problems] if isinstance(problems, str) else list(problems)
        if problems:
            self.failed += 1
            print(f"not ok - {what}")
            for p in problems:
                print(f"#   {p}")
        else:
            self.passed += 1
            print(f"ok - {what}")


def check_overlay(ck, overlay, docs):
    def of(kind):
        return [d for d in docs if d.get("kind") == kind]

    def named(kind, name, ns=None):
        return next((d for d in of(kind) if d["metadata"]["name"] == name
                     and (ns is None or d["metadata"].get("namespace") == ns)), None)

    def ident(d):
        m = d["metadata"]
        return f"{d['kind']} {m.get('namespace', '')}/{m['name']}".replace(" /", " ")

    workloads = [(d, *pod_template(d)) for d in docs if pod_template(d)]
    p = f"{overlay}:"
    ck.check(f"{p} renders workloads ({len(workloads)}) and a namespace", [] if workloads and of("Namespace") else "nothing rendered")

    # Pod Security "restricted" and Haven's own rules.
    for d, meta, spec in workloads:
        ck.check(f"{p} {ident(d)} meets Pod Security \"restricted\"", restricted_violations(meta, spec))
        ck.check(f"{p} {ident(d)} meets Haven's pod rules", haven_violations(d["kind"], spec))
    problems = []
    for d, _, _ in workloads:
        ns = named("Namespace", d["metadata"].get("namespace", ""))
        labels = (ns or {}).get("metadata", {}).get("labels", {})
        if not ns:
            problems.append(f"{ident(d)}: its namespace is not part of the overlay")
        elif labels.get("pod-security.kubernetes.io/enforce") != "restricted":
            problems.append(f"namespace {ns['metadata']['name']} does not enforce restricted")
    ck.check(f"{p} every workload's namespace enforces Pod Security \"restricted\"", problems)
    problems = [f"{ident(d)} has no namespace" for d in docs
                if d["kind"] not in CLUSTER_SCOPED and not d["metadata"].get("namespace")]
    ck.check(f"{p} every namespaced object names its namespace", problems)

    # Network policy.
    deny = [n for n in of("NetworkPolicy") if is_default_deny(n)]
    ck.check(f"{p} a default-deny NetworkPolicy (podSelector {{}}, Ingress+Egress, no rules)",
             [] if deny else "none found")
    pod_labels = [(d["metadata"].get("namespace"), meta.get("labels") or {}) for d, meta, _ in workloads]
    clusters = {c["metadata"]["name"] for c in of("Cluster")}
    problems = []
    for n in of("NetworkPolicy"):
        if n in deny:
            continue
        sel = n["spec"].get("podSelector") or {}
        cnpg = (sel.get("matchLabels") or {}).get("cnpg.io/cluster")
        if cnpg:
            if cnpg not in clusters:
                problems.append(f"{ident(n)} selects database pods of a Cluster {cnpg} that is not defined")
        elif sel and not any(ns == n["metadata"].get("namespace") and selects(sel, lab) for ns, lab in pod_labels):
            problems.append(f"{ident(n)} selects no pod")
    ck.check(f"{p} every other NetworkPolicy selects pods that exist", problems)

    # RBAC.
    sas = {(s["metadata"].get("namespace"), s["metadata"]["name"]) for s in of("ServiceAccount")}
    problems = [f"ServiceAccount {s['metadata']['name']} mounts tokens" for s in of("ServiceAccount")
                if s.get("automountServiceAccountToken") is not False]
    for b in of("RoleBinding") + of("ClusterRoleBinding"):
        for s in b.get("subjects") or []:
            if s.get("kind") == "ServiceAccount" and (s.get("namespace", b["metadata"].get("namespace")), s["name"]) in sas:
                problems.append(f"{ident(b)} grants to Haven's ServiceAccount {s['name']}")
    for r in of("Role") + of("ClusterRole"):
        for rule in r.get("rules") or []:
            res, verbs = set(rule.get("resources") or []), set(rule.get("verbs") or [])
            if "*" in res or "*" in verbs or "*" in (rule.get("apiGroups") or []):
                problems.append(f"{ident(r)} uses a wildcard")
            if res & {"secrets", "pods/exec", "pods/attach", "pods/portforward"}:
                problems.append(f"{ident(r)} grants {sorted(res & {'secrets', 'pods/exec', 'pods/attach', 'pods/portforward'})}")
            if verbs & {"escalate", "bind", "impersonate"}:
                problems.append(f"{ident(r)} grants {sorted(verbs)}")
    for d, _, spec in workloads:
        if (d["metadata"].get("namespace"), spec.get("serviceAccountName")) not in sas:
            problems.append(f"{ident(d)}: ServiceAccount {spec.get('serviceAccountName')} is not defined")
    ck.check(f"{p} ServiceAccounts without tokens or bindings; Roles without wildcards, Secrets or exec", problems)

    # References between objects.
    problems = []
    for ing in of("Ingress"):
        for rule in ing["spec"].get("rules") or []:
            for path in (rule.get("http") or {}).get("paths") or []:
                b = path["backend"]["service"]
                svc = named("Service", b["name"], ing["metadata"].get("namespace"))
                ports = [x.get("name") for x in (svc or {}).get("spec", {}).get("ports", [])]
                if not svc or b["port"].get("name") not in ports:
                    problems.append(f"{ident(ing)} {path['path']} -> {b['name']}:{b['port']} does not exist")
    for svc in of("Service"):
        sel = {"matchLabels": svc["spec"].get("selector") or {}}
        if not any(ns == svc["metadata"].get("namespace") and selects(sel, lab) for ns, lab in pod_labels):
            problems.append(f"{ident(svc)} selects no pod")
    for hpa in of("HorizontalPodAutoscaler"):
        t = hpa["spec"]["scaleTargetRef"]
        if not named(t["kind"], t["name"], hpa["metadata"].get("namespace")):
            problems.append(f"{ident(hpa)} scales {t['kind']} {t['name']}, which does not exist")
    for pdb in of("PodDisruptionBudget"):
        if not any(selects(pdb["spec"]["selector"], lab) for _, lab in pod_labels):
            problems.append(f"{ident(pdb)} selects no pod")
    for d, _, spec in workloads:
        for _, c in containers(spec):
            for e in c.get("envFrom") or []:
                ref = (e.get("configMapRef") or {}).get("name")
                if ref and not named("ConfigMap", ref, d["metadata"].get("namespace")):
                    problems.append(f"{ident(d)}: ConfigMap {ref} does not exist")
    storage_classes = {s["metadata"]["name"]: s for s in of("StorageClass")}
    wanted = [(ident(d), t["spec"].get("storageClassName")) for d in of("StatefulSet")
              for t in d["spec"].get("volumeClaimTemplates") or []]
    wanted += [(ident(c), (c["spec"].get(k) or {}).get("storageClass")) for c in of("Cluster")
               for k in ("storage", "walStorage")]
    wanted += [(ident(c), c["spec"].get("storageClassName")) for c in of("PersistentVolumeClaim")]
    for d, _, spec in workloads:
        for vol in spec.get("volumes") or []:
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and not named("PersistentVolumeClaim", claim, d["metadata"].get("namespace")):
                problems.append(f"{ident(d)}: PersistentVolumeClaim {claim} does not exist")
    for who, name in wanted:
        params = (storage_classes.get(name) or {}).get("parameters") or {}
        if params.get("encrypted") != "true" and not ENCRYPTION_PARAMETERS & set(params):
            problems.append(f"{who}: StorageClass {name!r} is not an encrypting StorageClass of the overlay")
    issuers = {(i["metadata"].get("namespace"), i["metadata"]["name"]) for i in of("Issuer")}
    for cert in of("Certificate"):
        ref = cert["spec"]["issuerRef"]
        if ref.get("kind", "Issuer") == "Issuer" and (cert["metadata"].get("namespace"), ref["name"]) not in issuers:
            problems.append(f"{ident(cert)}: Issuer {ref['name']} is not defined in its namespace")
    ck.check(f"{p} references resolve (Ingress, Services, HPA, PDB, ConfigMaps, claims, StorageClasses, issuers)", problems)

    # Haven's start-up refusals (issue 8), judged on each Haven container's environment, so a
    # manifest cannot ship a configuration the binary would refuse to start with.
    problems = []
    for d, _, spec in workloads:
        for _, c in containers(spec):
            if c.get("image", "").split("@")[0].rsplit("/", 1)[-1].split(":")[0] != "haven":
                continue
            env = {}
            for e in c.get("envFrom") or []:
                ref = (e.get("configMapRef") or {}).get("name")
                cm = named("ConfigMap", ref, d["metadata"].get("namespace")) if ref else None
                env.update((cm or {}).get("data") or {})
            env.update({e["name"]: e.get("value") for e in c.get("env") or [] if "value" in e})
            problems += [f"{ident(d)} {c['name']}: {m}" for m in haven_startup_violations(env)]
    ck.check(f"{p} Haven's environment passes its start-up checks (TLS or a declared gateway; verified TLS to the database)", problems)

    # What each overlay promises.
    def args(d):
        return [a for _, c in containers(pod_template(d)[1]) for a in c.get("args") or []]

    if overlay == "single-node":
        sts = named("StatefulSet", "haven")
        problems = []
        if not sts:
            problems.append("no StatefulSet haven")
        else:
            if sts["spec"].get("replicas") != 1:
                problems.append("SQLite is single-writer: replicas must be 1")
            if args(sts)[:3] != ["serve", "--role", "all"]:
                problems.append(f"args {args(sts)}")
            if not sts["spec"].get("volumeClaimTemplates"):
                problems.append("no volumeClaimTemplates for the SQLite data")
        if of("Deployment") or of("HorizontalPodAutoscaler") or of("Cluster"):
            problems.append("single-node must not run Deployments, autoscalers or PostgreSQL")
        if of("CronJob"):
            problems.append("single-node must not run CronJobs: the SQLite data is on the StatefulSet's "
                            "ReadWriteOnce volume (back up with kubectl exec, README.md)")
        ck.check(f"{p} one StatefulSet, one replica, every module, SQLite on a claimed volume", problems)
    if overlay in ("production", "istio"):
        problems = []
        for role in ("fhir", "identity"):
            dep = named("Deployment", f"haven-{role}")
            if not dep or args(dep)[:3] != ["serve", "--role", role]:
                problems.append(f"no Deployment haven-{role} running serve --role {role}")
                continue
            hpa = [h for h in of("HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]]
            if not hpa or hpa[0]["spec"].get("minReplicas", 1) < 2:
                problems.append(f"haven-{role}: no autoscaler with at least 2 replicas")
            labels = pod_template(dep)[0].get("labels") or {}
            if not any(selects(b["spec"]["selector"], labels) for b in of("PodDisruptionBudget")):
                problems.append(f"haven-{role}: no PodDisruptionBudget")
            if "replicas" in dep["spec"]:
                problems.append(f"haven-{role}: replicas is set, and would fight the autoscaler")
        job = named("Job", "haven-migrate")
        steps = [c.get("args") for _, c in containers(pod_template(job)[1])] if job else []
        if steps[:2] != [["migrate"], ["db", "grant", "--app-role", "haven_app"]]:
            problems.append(f"migration Job steps {steps}")
        ck.check(f"{p} haven-fhir and haven-identity Deployments with HPA and PDB; migrate, then grant", problems)

        problems = []
        cron = named("CronJob", "haven-backup")
        if not cron:
            problems.append("no CronJob haven-backup")
        else:
            s = cron["spec"]
            if args(cron)[:2] != ["backup", "--into"]:
                problems.append(f"args {args(cron)}: not `backup --into DIR`")
            if s.get("concurrencyPolicy") != "Forbid":
                problems.append(f"concurrencyPolicy {s.get('concurrencyPolicy')!r}: two backups could run at once")
            if not s.get("startingDeadlineSeconds"):
                problems.append("no startingDeadlineSeconds")
            job = s["jobTemplate"]["spec"]
            if not job.get("activeDeadlineSeconds") or job.get("backoffLimit", 6) > 3:
                problems.append("the Job needs activeDeadlineSeconds and a backoffLimit of at most 3")
            spec = pod_template(cron)[1]
            mounts = {m["mountPath"]: m["name"] for _, c in containers(spec) for m in c.get("volumeMounts") or []}
            target = args(cron)[2] if len(args(cron)) > 2 else None
            claims = [v for v in spec.get("volumes") or [] if v["name"] == mounts.get(target) and "persistentVolumeClaim" in v]
            if not claims:
                problems.append(f"the backup directory {target} is not a PersistentVolumeClaim")
        ck.check(f"{p} a nightly backup CronJob: never two at once, bounded, onto a claimed volume", problems)

        problems = []
        cluster = named("Cluster", "haven-db")
        if not cluster:
            problems.append("no CloudNativePG Cluster haven-db")
        else:
            s = cluster["spec"]
            if cluster["apiVersion"] != "postgresql.cnpg.io/v1" or s.get("instances") != 3:
                problems.append("not a postgresql.cnpg.io/v1 Cluster with 3 instances")
            tls = (s.get("certificates") or {}).get("serverTLSSecret")
            if not tls or not any(c["spec"]["secretName"] == tls for c in of("Certificate")):
                problems.append("server TLS certificate not issued by cert-manager in the overlay")
            if not DIGEST.match(s.get("imageName", "")):
                problems.append(f"imageName {s.get('imageName')!r} is not pinned by digest")
            archivers = [x for x in s.get("plugins") or [] if x.get("isWALArchiver")]
            store = archivers and (archivers[0].get("parameters") or {}).get("barmanObjectName")
            if not store or not named("ObjectStore", store):
                problems.append("no WAL archiver plugin with an ObjectStore of the overlay")
            if s.get("enableSuperuserAccess"):
                problems.append("superuser access enabled")
            if not any(sb["spec"]["cluster"]["name"] == "haven-db" for sb in of("ScheduledBackup")):
                problems.append("no ScheduledBackup of haven-db")
        ck.check(f"{p} PostgreSQL: 3 instances, TLS, encrypted storage, WAL archiving, scheduled backups", problems)
    if overlay == "istio":
        problems = []
        peer = [x for x in of("PeerAuthentication") if not (x.get("spec") or {}).get("selector")]
        if not peer or any((x["spec"].get("mtls") or {}).get("mode") != "STRICT" for x in peer):
            problems.append("no namespace-wide PeerAuthentication with mtls STRICT")
        if not any(not a.get("spec") for a in of("AuthorizationPolicy")):
            problems.append("no allow-nothing AuthorizationPolicy (spec {})")
        for role in ("fhir", "identity"):
            dep = named("Deployment", f"haven-{role}")
            labels = pod_template(dep)[0].get("labels") or {} if dep else {}
            if not any(a.get("spec", {}).get("action", "ALLOW") == "ALLOW"
                       and selects(a["spec"].get("selector"), labels) for a in of("AuthorizationPolicy")):
                problems.append(f"haven-{role}: no ALLOW AuthorizationPolicy selects it")
        ns = named("Namespace", "haven")
        if (ns or {}).get("metadata", {}).get("labels", {}).get("istio-injection") != "enabled":
            problems.append("namespace haven is not labelled istio-injection=enabled")
        ck.check(f"{p} STRICT mTLS, allow-nothing, an AuthorizationPolicy per module, injection on", problems)


def self_test(ck, docs):
    """The checks must be able to fail: break each control on a copy and expect a report."""
    base = next(pod_template(d) for d in docs if d.get("kind") in ("Deployment", "StatefulSet"))
    breaks = {
        "hostNetwork": lambda m, s: s.update(hostNetwork=True),
        "hostPID": lambda m, s: s.update(hostPID=True),
        "hostPath volume": lambda m, s: s.setdefault("volumes", []).append({"name": "h", "hostPath": {"path": "/"}}),
        "nfs volume": lambda m, s: s.setdefault("volumes", []).append({"name": "n", "nfs": {"server": "x", "path": "/"}}),
        "privileged": lambda m, s: s["containers"][0]["securityContext"].update(privileged=True),
        "privilege escalation": lambda m, s: s["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
        "capabilities kept": lambda m, s: s["containers"][0]["securityContext"]["capabilities"].update(drop=["NET_RAW"]),
        "capability added": lambda m, s: s["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
        "root allowed": lambda m, s: (s["securityContext"].pop("runAsNonRoot"), s["containers"][0]["securityContext"].pop("runAsNonRoot")),
        "container runAsNonRoot false": lambda m, s: s["containers"][0]["securityContext"].update(runAsNonRoot=False),
        "uid 0": lambda m, s: s["containers"][0]["securityContext"].update(runAsUser=0),
        "seccomp unconfined": lambda m, s: s["containers"][0]["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        "no seccomp": lambda m, s: (s["securityContext"].pop("seccompProfile"), s["containers"][0]["securityContext"].pop("seccompProfile")),
        "hostPort": lambda m, s: s["containers"][0]["ports"][0].update(hostPort=8080),
        "unsafe sysctl": lambda m, s: s["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
        "unmasked /proc": lambda m, s: s["containers"][0]["securityContext"].update(procMount="Unmasked"),
    }
    missed = []
    for what, mutate in breaks.items():
        meta, spec = copy.deepcopy(base)
        mutate(meta, spec)
        if not restricted_violations(meta, spec):
            missed.append(f"restricted check accepts: {what}")
    haven_breaks = {
        "writable root": lambda s: s["containers"][0]["securityContext"].update(readOnlyRootFilesystem=False),
        "token mounted": lambda s: s.pop("automountServiceAccountToken"),
        "tag-only image": lambda s: s["containers"][0].update(image="registry.example.org/haven/haven:0.1.0"),
        "no memory limit": lambda s: s["containers"][0]["resources"]["limits"].pop("memory"),
        "no readiness probe": lambda s: s["containers"][0].pop("readinessProbe"),
        "secret in env": lambda s: s["containers"][0].setdefault("env", []).append(
            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}),
    }
    for what, mutate in haven_breaks.items():
        meta, spec = copy.deepcopy(base)
        mutate(spec)
        if not haven_violations("Deployment", spec):
            missed.append(f"Haven rules accept: {what}")
    deny = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "d"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}
    if not is_default_deny(deny):
        missed.append("default-deny check refuses a default-deny policy")
    for what, mutate in {
        "an ingress rule": lambda s: s.update(ingress=[{}]),
        "ingress only": lambda s: s.update(policyTypes=["Ingress"]),
        "a pod selector": lambda s: s.update(podSelector={"matchLabels": {"a": "b"}}),
    }.items():
        pol = copy.deepcopy(deny)
        mutate(pol["spec"])
        if is_default_deny(pol):
            missed.append(f"default-deny check accepts a policy with {what}")
    gateway = {"HAVEN_LISTEN": "0.0.0.0:8080", "HAVEN_BEHIND_GATEWAY": "true",
               "HAVEN_TRUSTED_PROXIES": "10.244.0.0/16", "HAVEN_PUBLIC_URL": "https://x/fhir"}
    if haven_startup_violations(gateway) or haven_startup_violations({}) or haven_startup_violations(
            {"HAVEN_LISTEN": "0.0.0.0:8080", "HAVEN_TLS__CERT_FILE": "/c"}):
        missed.append("start-up check refuses a valid environment")
    startup_breaks = {
        "no behind_gateway": lambda e: e.pop("HAVEN_BEHIND_GATEWAY"),
        "no trusted proxies": lambda e: e.update(HAVEN_TRUSTED_PROXIES=""),
        "http public_url": lambda e: e.update(HAVEN_PUBLIC_URL="http://x/fhir"),
        "PGSSLMODE=require": lambda e: e.update(PGSSLMODE="require"),
    }
    for what, mutate in startup_breaks.items():
        env = dict(gateway)
        mutate(env)
        if not haven_startup_violations(env):
            missed.append(f"start-up check accepts: {what}")
    ck.check(f"self-test: {len(breaks)} restricted, {len(haven_breaks)} Haven, "
             f"{len(startup_breaks)} start-up and 4 default-deny violations are each detected", missed)


def main():
    ck = Checker()
    rendered = {}
    for arg in sys.argv[1:]:
        overlay, _, path = arg.partition("=")
        with open(path) as f:
            rendered[overlay] = [d for d in yaml.safe_load_all(f) if d]
    if not rendered:
        sys.exit(f"usage: {os.path.basename(sys.argv[0])} OVERLAY=RENDERED.yaml ...")
    self_test(ck, next(iter(rendered.values())))
    for overlay, docs in rendered.items():
        check_overlay(ck, overlay, docs)
    print(f"# manifest assertions: {ck.passed} passed, {ck.failed} failed")
    sys.exit(1 if ck.failed else 0)


if __name__ == "__main__":
    main()
