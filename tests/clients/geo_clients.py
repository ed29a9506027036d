"""GitLab's own clients against real Geohost sites (tests/all/gitlab_clients.rs).

    python geo_clients.py rest geo_nodes|geo_sites
    python geo_clients.py delete geo_nodes|geo_sites
    python geo_clients.py graphql

The sites come from the environment: GEOHOST_PRIMARY_URL, GEOHOST_PRIMARY_TOKEN,
GEOHOST_SECONDARY_URL, GEOHOST_SECONDARY_TOKEN, GEOHOST_SECONDARY_ID (and
GEOHOST_FILES_MAX_CAPACITY for `rest`; for `graphql`, GEOHOST_RESYNC_ID and
GEOHOST_REVERIFY_IDS, comma-separated, among the ids the list gives). Each command prints one JSON object,
what the clients saw, for the Rust test to check; a client error is reported
in it (its HTTP status), not raised.

`geo_nodes` is python-gitlab's own `gl.geonodes`. python-gitlab has no manager
for `geo_sites`; `GeoSiteManager` below is its `GeoNodeManager` pointed at
`/geo_sites`, so the same python-gitlab code (lists and their pagination, get,
save, delete) drives both route families.
"""

import json
import os
import sys

import gitlab
from gitlab.v4.objects.geo_nodes import GeoNode, GeoNodeManager


class GeoSite(GeoNode):
    def repair(self, **kwargs):
        self._update_attrs(
            self.manager.gitlab.http_post(f"/geo_sites/{self.encoded_id}/repair", **kwargs)
        )

    def status(self, **kwargs):
        return self.manager.gitlab.http_get(f"/geo_sites/{self.encoded_id}/status", **kwargs)


class GeoSiteManager(GeoNodeManager):
    _path = "/geo_sites"
    _obj_cls = GeoSite

    def status(self, **kwargs):
        return self.gitlab.http_list("/geo_sites/status", **kwargs)

    def current_failures(self, **kwargs):
        return self.gitlab.http_list("/geo_sites/current/failures", **kwargs)


def env(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"{name} is not set")
    return value


def manager(gl, family):
    if family == "geo_nodes":
        return gl.geonodes
    if family == "geo_sites":
        return GeoSiteManager(gl)
    sys.exit(f"unknown route family {family!r}")


def error_of(call):
    """Runs `call`; a python-gitlab error becomes {"error": status, "message": …}."""
    try:
        return call()
    except gitlab.exceptions.GitlabError as error:
        return {"error": error.response_code, "message": str(error.error_message)}


def rest(family):
    primary = gitlab.Gitlab(env("GEOHOST_PRIMARY_URL"), private_token=env("GEOHOST_PRIMARY_TOKEN"))
    secondary = gitlab.Gitlab(
        env("GEOHOST_SECONDARY_URL"), private_token=env("GEOHOST_SECONDARY_TOKEN")
    )
    sites = manager(primary, family)
    secondary_id = int(env("GEOHOST_SECONDARY_ID"))
    out = {}

    listed = sites.list(get_all=True)
    out["list"] = [site.asdict() for site in listed]
    # One a page, following python-gitlab's pagination (Link: next).
    out["list_one_a_page"] = [site.id for site in sites.list(per_page=1, get_all=True)]
    out["list_first_page"] = [site.id for site in sites.list(per_page=1, page=1)]

    site = sites.get(secondary_id)
    out["get"] = site.asdict()
    out["get_missing"] = error_of(lambda: sites.get(987654).asdict())

    out["status_all"] = sites.status()
    out["status_one"] = site.status()

    failures = manager(secondary, family)
    out["failures"] = failures.current_failures()
    out["failures_verification"] = failures.current_failures(failure_type="verification")
    out["failures_bad_type"] = error_of(lambda: failures.current_failures(failure_type="nope"))
    out["failures_on_primary"] = error_of(lambda: sites.current_failures())

    site.files_max_capacity = int(env("GEOHOST_FILES_MAX_CAPACITY"))
    site.save()
    out["saved"] = site.asdict()
    out["after_save"] = sites.get(secondary_id).asdict()

    site.repair()
    out["repaired"] = site.asdict()
    out["repair_missing"] = error_of(lambda: sites.get(987654, lazy=True).repair())
    return out


def delete(family):
    primary = gitlab.Gitlab(env("GEOHOST_PRIMARY_URL"), private_token=env("GEOHOST_PRIMARY_TOKEN"))
    sites = manager(primary, family)
    secondary_id = int(env("GEOHOST_SECONDARY_ID"))
    site = sites.get(secondary_id)
    site.delete()
    return {
        "get_after_delete": error_of(lambda: sites.get(secondary_id).asdict()),
        "remaining": [s.id for s in sites.list(get_all=True)],
    }


# The registry list as GitLab's admin page asks for it
# (ee/app/assets/javascripts/geo_replicable/graphql/replicable_type_query_builder.js),
# with its variables typed as GitLab types them.
LIST = """
query($first: Int, $last: Int, $before: String!, $after: String!, $sort: GeoRegistrySort
      $replicationState: ReplicationStateEnum, $verificationState: VerificationStateEnum,
      $ids: [GeoPackagesHelmMetadataCacheRegistryID!]) {
  geoNode {
    id
    name
    internalUrl
    reposMaxCapacity
    containerRepositoriesMaxCapacity
    selectiveSyncType
    selectiveSyncNamespaces { nodes { id } }
    packagesHelmMetadataCacheRegistries(first: $first, last: $last, before: $before,
        after: $after, sort: $sort replicationState: $replicationState,
        verificationState: $verificationState, ids: $ids) {
      pageInfo { ...PageInfo }
      count
      limited: count(limit: 2)
      nodes {
        id
        state
        retryCount
        lastSyncFailure
        retryAt
        lastSyncedAt
        modelRecordId
        verifiedAt
        verificationState
        verificationFailure
        createdAt
      }
    }
  }
}
fragment PageInfo on PageInfo {
  hasNextPage
  hasPreviousPage
  startCursor
  endCursor
  __typename
}
"""

UPDATE = """
mutation($registryId: GeoBaseRegistryID!, $action: GeoRegistryAction!) {
  geoRegistriesUpdate(input: { registryId: $registryId, action: $action }) {
    errors
    registry { ... on PackagesHelmMetadataCacheRegistry { id state modelRecordId } }
  }
}
"""

BULK = """
mutation($registryClass: GeoRegistryClass!, $action: GeoRegistriesBulkAction!,
         $ids: [GeoBaseRegistryID!]) {
  geoRegistriesBulkUpdate(input: { registryClass: $registryClass, action: $action, ids: $ids }) {
    errors
    registryClass
  }
}
"""

# What GitLab's schema would refuse too: `ids` of the registry list are not `ID`s.
MISTYPED = """
query($ids: [ID!]) {
  geoNode { packagesHelmMetadataCacheRegistries(ids: $ids) { nodes { id } } }
}
"""


def type_of(type_ref):
    """`[GeoBaseRegistryID!]`-style text of an introspected type."""
    from graphql import GraphQLList, GraphQLNonNull

    if isinstance(type_ref, GraphQLNonNull):
        return type_of(type_ref.of_type) + "!"
    if isinstance(type_ref, GraphQLList):
        return "[" + type_of(type_ref.of_type) + "]"
    return type_ref.name


def default_of(argument):
    """An introspected argument's default value, as GraphQL text."""
    from graphql import print_ast

    default = getattr(argument, "default", None)
    return print_ast(default.literal) if default is not None else None


def graphql():
    from graphql import GraphQLError

    client = gitlab.GraphQL(
        env("GEOHOST_SECONDARY_URL"),
        token=env("GEOHOST_SECONDARY_TOKEN"),
        fetch_schema_from_transport=True,
    )
    out = {}
    first = {"first": 50, "before": "", "after": ""}
    listed = client.execute(LIST, variable_values=first)
    out["list"] = listed

    # The schema the client introspected and validated against.
    schema = client._client.schema
    registries = schema.get_type("GeoNode").fields["packagesHelmMetadataCacheRegistries"]
    update_input = schema.get_type("GeoRegistriesUpdateInput").fields
    bulk_input = schema.get_type("GeoRegistriesBulkUpdateInput").fields
    connection = schema.get_type("PackagesHelmMetadataCacheRegistryConnection").fields
    out["schema"] = {
        "scalars": sorted(
            name for name, t in schema.type_map.items() if name.startswith("Geo") and name.endswith("ID")
        ),
        "list_ids": type_of(registries.args["ids"].type),
        "registry_id": type_of(update_input["registryId"].type),
        "bulk_ids": type_of(bulk_input["ids"].type),
        "count": type_of(connection["count"].type),
        "count_limit": type_of(connection["count"].args["limit"].type),
        "count_limit_default": default_of(connection["count"].args["limit"]),
        "node_id": type_of(schema.get_type("GeoNode").fields["id"].type),
        "selective_sync_namespaces": type_of(
            schema.get_type("GeoNode").fields["selectiveSyncNamespaces"].type
        ),
    }

    nodes = listed["geoNode"]["packagesHelmMetadataCacheRegistries"]["nodes"]
    ids = [node["id"] for node in nodes]
    resync = env("GEOHOST_RESYNC_ID")
    reverify = env("GEOHOST_REVERIFY_IDS").split(",")
    if resync not in ids or not set(reverify) <= set(ids):
        sys.exit(f"the ids to act on ({resync}, {reverify}) are not among the listed {ids}")
    # Global ids round-trip: the ids the list gave select those rows again.
    again = client.execute(LIST, variable_values={**first, "ids": reverify})
    out["by_ids"] = [n["id"] for n in again["geoNode"]["packagesHelmMetadataCacheRegistries"]["nodes"]]

    out["update"] = client.execute(
        UPDATE, variable_values={"registryId": resync, "action": "RESYNC"}
    )["geoRegistriesUpdate"]
    out["bulk"] = client.execute(
        BULK,
        variable_values={
            "registryClass": "PACKAGES_HELM_METADATA_CACHE_REGISTRY",
            "action": "REVERIFY_ALL",
            "ids": reverify,
        },
    )["geoRegistriesBulkUpdate"]

    # The client refuses, before sending, a document the schema does not allow.
    try:
        client.execute(MISTYPED, variable_values={"ids": ids[:1]})
        out["mistyped"] = "accepted"
    except GraphQLError as error:
        out["mistyped"] = str(error)
    # And the server refuses an id of another class in a typed variable.
    try:
        client.execute(
            UPDATE, variable_values={"registryId": "gid://gitlab/Project/1", "action": "RESYNC"}
        )
        out["foreign_id"] = "accepted"
    except Exception as error:  # a server-side GraphQL error
        out["foreign_id"] = str(error)
    return out


def main():
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "rest":
        result = rest(sys.argv[2])
    elif command == "delete":
        result = delete(sys.argv[2])
    elif command == "graphql":
        result = graphql()
    else:
        sys.exit(__doc__)
    json.dump(result, sys.stdout, default=str)


if __name__ == "__main__":
    main()
