"""The lab's Kubernetes API server: real HTTP that kubectl and the official client accept.

Run as `python -m nodegate.lab.apiserver --dir DIR`. All objects live in memory
(`store.Store`); a reconcile loop (`cluster.Cluster`) mirrors the lab's nodes from their
`state.json`, runs the few controllers a drain needs (ReplicaSets, DaemonSets, Deployments,
PDB status, pod lifecycle) and couples Rook's OSD pods to the real Ceph OSD daemons.
"""
