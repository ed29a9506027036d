//! The dynamic schema: GitLab's Geo types, one registry type (with its
//! connection, `GeoNode` field and `GeoRegistryClass` value) per installed
//! type.

use super::resolve::{
    self, BASE_REGISTRY_ID, BulkArgs, BulkPayload, COUNT_LIMIT, ConfirmPayload, ConnectionValue,
    ListArgs, NamespaceValue, NodeMemory, NodeValue, RegistryValue, ReplicableTypeValue,
    UpdatePayload, names,
};
use crate::catalog::InstalledType;
use crate::secondary::listing::Sort;
use crate::site::Site;
use async_graphql::dynamic::{
    Enum, Field, FieldFuture, FieldValue, InputObject, InputValue, Interface, InterfaceField,
    Object, ResolverContext, Scalar, Schema, SchemaError, TypeRef, Union,
};
use async_graphql::{Error, Name, Value};
use chrono::{DateTime, SecondsFormat, Utc};
use std::sync::Arc;

const REGISTRY_INTERFACE: &str = "GeoRegistry";
const REGISTRABLE_UNION: &str = "RegistrableType";
const TIME: &str = "Time";

/// GitLab's `Time`: ISO 8601, whole seconds, UTC.
fn time(at: Option<DateTime<Utc>>) -> Value {
    at.map_or(Value::Null, |at| {
        Value::String(at.to_rfc3339_opts(SecondsFormat::Secs, true))
    })
}

fn enum_value(name: &str) -> Value {
    Value::Enum(Name::new(name))
}

fn opt<T: Into<Value>>(value: Option<T>) -> Value {
    value.map_or(Value::Null, Into::into)
}

type Getter = fn(&RegistryValue) -> Value;

/// A resolved value; `null` as "no value", which every output type takes.
fn present(value: Value) -> Option<FieldValue<'static>> {
    match value {
        Value::Null => None,
        value => Some(FieldValue::value(value)),
    }
}

/// GitLab's `RegistryType` fields (and `replicableName`, of the interface).
fn registry_fields() -> Vec<(&'static str, TypeRef, Getter)> {
    vec![
        ("id", TypeRef::named_nn(TypeRef::ID), |r| {
            Value::String(resolve::gid(&r.type_name, r.row.id))
        }),
        ("state", TypeRef::named("RegistryState"), |r| {
            enum_value(resolve::sync_state_name(r.row.state))
        }),
        ("retryCount", TypeRef::named(TypeRef::INT), |r| {
            r.row.retry_count.into()
        }),
        ("lastSyncFailure", TypeRef::named(TypeRef::STRING), |r| {
            opt(r.row.last_sync_failure.clone())
        }),
        ("retryAt", TypeRef::named(TIME), |r| time(r.row.retry_at)),
        ("lastSyncedAt", TypeRef::named(TIME), |r| {
            time(r.row.last_synced_at)
        }),
        ("verifiedAt", TypeRef::named(TIME), |r| {
            time(r.row.verified_at)
        }),
        ("verificationRetryAt", TypeRef::named(TIME), |r| {
            time(r.row.verification_retry_at)
        }),
        ("createdAt", TypeRef::named(TIME), |r| {
            time(Some(r.row.created_at))
        }),
        ("checksumMismatch", TypeRef::named(TypeRef::BOOLEAN), |r| {
            r.row.checksum_mismatch.into()
        }),
        (
            "verificationChecksum",
            TypeRef::named(TypeRef::STRING),
            |r| opt(r.row.verification_checksum.clone()),
        ),
        (
            "verificationChecksumMismatched",
            TypeRef::named(TypeRef::STRING),
            |r| opt(r.row.verification_checksum_mismatched.clone()),
        ),
        (
            "verificationFailure",
            TypeRef::named(TypeRef::STRING),
            |r| opt(r.row.verification_failure.clone()),
        ),
        ("verificationStartedAt", TypeRef::named(TIME), |r| {
            time(r.row.verification_started_at)
        }),
        (
            "verificationRetryCount",
            TypeRef::named(TypeRef::INT),
            |r| r.row.verification_retry_count.into(),
        ),
        (
            "verificationState",
            TypeRef::named("VerificationStateEnum"),
            |r| enum_value(resolve::verification_state_name(r.row.verification_state)),
        ),
        ("modelRecordId", TypeRef::named(TypeRef::INT), |r| {
            r.row.model_id.into()
        }),
        // GitLab answers null unless a replicator tracks it; Geohost does not.
        ("missingOnPrimary", TypeRef::named(TypeRef::BOOLEAN), |_| {
            Value::Null
        }),
        ("replicableName", TypeRef::named_nn(TypeRef::STRING), |r| {
            Value::String(r.replicable_name.clone())
        }),
    ]
}

fn registry_field(name: &'static str, ty: TypeRef, get: Getter) -> Field {
    Field::new(name, ty, move |ctx| {
        FieldFuture::new(async move {
            let registry = ctx.parent_value.try_downcast_ref::<RegistryValue>()?;
            Ok(present(get(registry)))
        })
    })
}

/// A field reading a value from a parent of type `T`.
fn field_of<T: Send + Sync + 'static>(name: &str, ty: TypeRef, get: fn(&T) -> Value) -> Field {
    Field::new(name, ty, move |ctx| {
        FieldFuture::new(async move {
            let parent = ctx.parent_value.try_downcast_ref::<T>()?;
            Ok(present(get(parent)))
        })
    })
}

fn enums() -> Vec<Enum> {
    vec![
        Enum::new("RegistryState").items(["PENDING", "STARTED", "SYNCED", "FAILED"]),
        Enum::new("ReplicationStateEnum").items(["PENDING", "STARTED", "SYNCED", "FAILED"]),
        Enum::new("VerificationStateEnum").items([
            "PENDING",
            "STARTED",
            "SUCCEEDED",
            "FAILED",
            "DISABLED",
        ]),
        Enum::new("GeoRegistrySort").items(Sort::NAMES),
        Enum::new("GeoRegistryAction").items(["RESYNC", "REVERIFY"]),
        Enum::new("GeoRegistriesBulkAction").items(["RESYNC_ALL", "REVERIFY_ALL"]),
    ]
}

/// The arguments of every registries field; `ids` are of type `ids_type`
/// (`Geo<Type>RegistryID`, as in GitLab's admin page queries).
fn list_arguments(field: Field, ids_type: &str) -> Field {
    field
        .argument(InputValue::new("ids", TypeRef::named_nn_list(ids_type)))
        .argument(InputValue::new(
            "replicationState",
            TypeRef::named("ReplicationStateEnum"),
        ))
        .argument(InputValue::new(
            "verificationState",
            TypeRef::named("VerificationStateEnum"),
        ))
        .argument(InputValue::new("keyword", TypeRef::named(TypeRef::STRING)))
        .argument(InputValue::new("sort", TypeRef::named("GeoRegistrySort")))
        .argument(InputValue::new("first", TypeRef::named(TypeRef::INT)))
        .argument(InputValue::new("after", TypeRef::named(TypeRef::STRING)))
        .argument(InputValue::new("last", TypeRef::named(TypeRef::INT)))
        .argument(InputValue::new("before", TypeRef::named(TypeRef::STRING)))
}

fn string_arg(ctx: &ResolverContext<'_>, name: &str) -> Result<Option<String>, Error> {
    match ctx.args.get(name) {
        Some(v) if !v.is_null() => Ok(Some(v.string()?.to_string())),
        _ => Ok(None),
    }
}

/// A page cursor; `""` is none, as GitLab's admin page sends
/// `$after: String!` empty for the first page.
fn cursor_arg(ctx: &ResolverContext<'_>, name: &str) -> Result<Option<String>, Error> {
    Ok(string_arg(ctx, name)?.filter(|c| !c.is_empty()))
}

fn enum_arg(ctx: &ResolverContext<'_>, name: &str) -> Result<Option<String>, Error> {
    match ctx.args.get(name) {
        Some(v) if !v.is_null() => Ok(Some(v.enum_name()?.to_string())),
        _ => Ok(None),
    }
}

fn int_arg(ctx: &ResolverContext<'_>, name: &str) -> Result<Option<i64>, Error> {
    match ctx.args.get(name) {
        Some(v) if !v.is_null() => Ok(Some(v.i64()?)),
        _ => Ok(None),
    }
}

fn list_args(ctx: &ResolverContext<'_>) -> Result<ListArgs, Error> {
    let ids = match ctx.args.get("ids") {
        Some(v) if !v.is_null() => Some(
            v.list()?
                .iter()
                .map(|id| id.string().map(str::to_string))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        _ => None,
    };
    Ok(ListArgs {
        ids,
        replication_state: enum_arg(ctx, "replicationState")?,
        verification_state: enum_arg(ctx, "verificationState")?,
        keyword: string_arg(ctx, "keyword")?,
        sort: enum_arg(ctx, "sort")?,
        first: int_arg(ctx, "first")?,
        after: cursor_arg(ctx, "after")?,
        last: int_arg(ctx, "last")?,
        before: cursor_arg(ctx, "before")?,
    })
}

/// `<Type>Connection` and `<Type>Edge` for nodes of `node_type` (an object,
/// or the interface when `abstract_nodes`).
fn connection(node_type: &str, abstract_nodes: bool) -> (Object, Object) {
    let edge_name = format!("{node_type}Edge");
    let wrap = move |value: &RegistryValue| {
        let field = FieldValue::owned_any(value.clone());
        if abstract_nodes {
            field.with_type(value.type_name.clone())
        } else {
            field
        }
    };
    let connection = Object::new(format!("{node_type}Connection"))
        .field(Field::new(
            "nodes",
            TypeRef::named_list(node_type),
            move |ctx| {
                FieldFuture::new(async move {
                    let page = ctx.parent_value.try_downcast_ref::<ConnectionValue>()?;
                    Ok(Some(FieldValue::list(page.nodes.iter().map(wrap))))
                })
            },
        ))
        .field(Field::new(
            "edges",
            TypeRef::named_list(&edge_name),
            |ctx| {
                FieldFuture::new(async move {
                    let page = ctx.parent_value.try_downcast_ref::<ConnectionValue>()?;
                    Ok(Some(FieldValue::list(
                        page.nodes.iter().map(|n| FieldValue::owned_any(n.clone())),
                    )))
                })
            },
        ))
        .field(
            Field::new("count", TypeRef::named_nn(TypeRef::INT), |ctx| {
                FieldFuture::new(async move {
                    let page = ctx.parent_value.try_downcast_ref::<ConnectionValue>()?;
                    let limit = int_arg(&ctx, "limit")?.unwrap_or(COUNT_LIMIT);
                    Ok(Some(FieldValue::value(page.count(limit).await?)))
                })
            })
            .description(
                "Returns the number of items in the connection up to a limit. \
                 If the number is greater than the limit, returns `limit + 1`.",
            )
            .argument(
                InputValue::new("limit", TypeRef::named(TypeRef::INT))
                    .default_value(COUNT_LIMIT)
                    .description("Limit value to be applied to the count query. Default is 1000."),
            ),
        )
        .field(Field::new(
            "pageInfo",
            TypeRef::named_nn("PageInfo"),
            |ctx| {
                FieldFuture::new(async move {
                    let page = ctx.parent_value.try_downcast_ref::<ConnectionValue>()?;
                    Ok(Some(FieldValue::owned_any(PageInfoValue {
                        has_next_page: page.has_next_page,
                        has_previous_page: page.has_previous_page,
                        start_cursor: page.nodes.first().map(|n| n.cursor.clone()),
                        end_cursor: page.nodes.last().map(|n| n.cursor.clone()),
                    })))
                })
            },
        ));
    let edge = Object::new(edge_name)
        .field(field_of::<RegistryValue>(
            "cursor",
            TypeRef::named_nn(TypeRef::STRING),
            |r| Value::String(r.cursor.clone()),
        ))
        .field(Field::new("node", TypeRef::named(node_type), move |ctx| {
            FieldFuture::new(async move {
                let node = ctx.parent_value.try_downcast_ref::<RegistryValue>()?;
                Ok(Some(wrap(node)))
            })
        }));
    (connection, edge)
}

/// What `PageInfo` shows, for any connection.
#[derive(Debug, Clone)]
struct PageInfoValue {
    has_next_page: bool,
    has_previous_page: bool,
    start_cursor: Option<String>,
    end_cursor: Option<String>,
}

fn page_info() -> Object {
    Object::new("PageInfo")
        .field(field_of::<PageInfoValue>(
            "hasNextPage",
            TypeRef::named_nn(TypeRef::BOOLEAN),
            |p| p.has_next_page.into(),
        ))
        .field(field_of::<PageInfoValue>(
            "hasPreviousPage",
            TypeRef::named_nn(TypeRef::BOOLEAN),
            |p| p.has_previous_page.into(),
        ))
        .field(field_of::<PageInfoValue>(
            "startCursor",
            TypeRef::named(TypeRef::STRING),
            |p| opt(p.start_cursor.clone()),
        ))
        .field(field_of::<PageInfoValue>(
            "endCursor",
            TypeRef::named(TypeRef::STRING),
            |p| opt(p.end_cursor.clone()),
        ))
}

/// GitLab's `Namespace` (the fields a selective-sync list needs), its
/// connection and edge. Names are null on a secondary, which keeps none.
fn namespace_types() -> [Object; 3] {
    let namespace = Object::new("Namespace")
        .field(field_of::<NamespaceValue>(
            "id",
            TypeRef::named_nn(TypeRef::ID),
            |n| Value::String(format!("gid://gitlab/Group/{}", n.id)),
        ))
        .field(field_of::<NamespaceValue>(
            "name",
            TypeRef::named(TypeRef::STRING),
            |n| opt(n.name.clone()),
        ))
        .field(field_of::<NamespaceValue>(
            "path",
            TypeRef::named(TypeRef::STRING),
            |n| opt(n.path.clone()),
        ))
        .field(field_of::<NamespaceValue>(
            "fullPath",
            TypeRef::named(TypeRef::ID),
            |n| opt(n.full_path.clone()),
        ))
        .field(field_of::<NamespaceValue>(
            "fullName",
            TypeRef::named(TypeRef::STRING),
            |n| opt(n.full_name.clone()),
        ));
    // `nodes` and `edges` list the same values; an edge reads its cursor
    // and node from the namespace.
    let list = |name: &str, item_type: &str| {
        Field::new(name, TypeRef::named_list(item_type), |ctx| {
            FieldFuture::new(async move {
                let page = ctx.parent_value.try_downcast_ref::<NamespacePage>()?;
                Ok(Some(FieldValue::list(
                    page.nodes.iter().map(|n| FieldValue::owned_any(n.clone())),
                )))
            })
        })
    };
    let connection = Object::new("NamespaceConnection")
        .field(list("nodes", "Namespace"))
        .field(list("edges", "NamespaceEdge"))
        .field(Field::new(
            "pageInfo",
            TypeRef::named_nn("PageInfo"),
            |ctx| {
                FieldFuture::new(async move {
                    let page = ctx.parent_value.try_downcast_ref::<NamespacePage>()?;
                    Ok(Some(FieldValue::owned_any(page.info.clone())))
                })
            },
        ));
    let edge = Object::new("NamespaceEdge")
        .field(field_of::<NamespaceValue>(
            "cursor",
            TypeRef::named_nn(TypeRef::STRING),
            |n| Value::String(n.id.to_string()),
        ))
        .field(Field::new("node", TypeRef::named("Namespace"), |ctx| {
            FieldFuture::new(async move {
                let n = ctx.parent_value.try_downcast_ref::<NamespaceValue>()?;
                Ok(Some(FieldValue::owned_any(n.clone())))
            })
        }));
    [namespace, connection, edge]
}

/// One page of selective-sync namespaces.
#[derive(Debug, Clone)]
struct NamespacePage {
    nodes: Vec<NamespaceValue>,
    info: PageInfoValue,
}

/// Relay's slicing of a short list whose cursors are the namespace ids.
fn namespace_page(all: Vec<NamespaceValue>, args: &ListArgs) -> Result<NamespacePage, Error> {
    let position = |cursor: &Option<String>| -> Result<Option<usize>, Error> {
        cursor
            .as_deref()
            .map(|c| {
                all.iter()
                    .position(|n| n.id.to_string() == c)
                    .ok_or_else(|| Error::new(format!("invalid cursor {c:?}")))
            })
            .transpose()
    };
    let start = position(&args.after)?.map_or(0, |i| i + 1);
    let end = position(&args.before)?.unwrap_or(all.len()).max(start);
    let mut from = start;
    let mut to = end;
    if let Some(first) = args.first {
        to = to.min(
            from + usize::try_from(first)
                .map_err(|_| Error::new("`first` must not be negative"))?,
        );
    }
    if let Some(last) = args.last {
        from = from.max(to.saturating_sub(
            usize::try_from(last).map_err(|_| Error::new("`last` must not be negative"))?,
        ));
    }
    let nodes: Vec<NamespaceValue> = all[from..to].to_vec();
    Ok(NamespacePage {
        info: PageInfoValue {
            has_next_page: to < end,
            has_previous_page: from > start,
            start_cursor: nodes.first().map(|n| n.id.to_string()),
            end_cursor: nodes.last().map(|n| n.id.to_string()),
        },
        nodes,
    })
}

/// A registries field of `GeoNode` listing `replicable_name` (`None`: the
/// generic field, whose `replicableName` argument names the type).
fn registries_field(
    name: &str,
    ty: TypeRef,
    replicable_name: Option<String>,
    ids_type: &str,
) -> Field {
    let field = Field::new(name, ty, move |ctx| {
        let replicable_name = replicable_name.clone();
        FieldFuture::new(async move {
            let site = ctx.data::<Arc<Site>>()?;
            let node = ctx.parent_value.try_downcast_ref::<NodeValue>()?;
            let replicable = match replicable_name {
                Some(name) => name,
                None => ctx.args.try_get("replicableName")?.string()?.to_string(),
            };
            let page = resolve::list(site, node, &replicable, list_args(&ctx)?).await?;
            Ok(Some(FieldValue::owned_any(page)))
        })
    });
    list_arguments(field, ids_type)
}

fn geo_node(types: &[Arc<InstalledType>]) -> Object {
    let settings_field = |name: &str, ty: TypeRef, get: fn(&crate::feed::NodeSettings) -> Value| {
        Field::new(name, ty, move |ctx| {
            FieldFuture::new(async move {
                let node = ctx.parent_value.try_downcast_ref::<NodeValue>()?;
                Ok(node.settings.as_ref().map(get).and_then(present))
            })
        })
    };
    let mut node = Object::new("GeoNode")
        .field(Field::new("id", TypeRef::named_nn(TypeRef::ID), |ctx| {
            FieldFuture::new(async move {
                let node = ctx.parent_value.try_downcast_ref::<NodeValue>()?;
                match &node.settings {
                    Some(settings) => Ok(Some(FieldValue::value(resolve::node_gid(settings.id)))),
                    None => Err(Error::new(
                        "this site has not been able to read its id from its primary yet",
                    )),
                }
            })
        }))
        .field(field_of::<NodeValue>(
            "name",
            TypeRef::named(TypeRef::STRING),
            |n| Value::String(n.name.clone()),
        ))
        .field(field_of::<NodeValue>(
            "url",
            TypeRef::named(TypeRef::STRING),
            |n| Value::String(n.url.clone()),
        ))
        .field(settings_field(
            "internalUrl",
            TypeRef::named(TypeRef::STRING),
            |s| Value::String(s.internal_url().to_string()),
        ))
        .field(field_of::<NodeValue>(
            "primary",
            TypeRef::named(TypeRef::BOOLEAN),
            |n| n.primary.into(),
        ))
        .field(settings_field(
            "enabled",
            TypeRef::named(TypeRef::BOOLEAN),
            |s| s.enabled.into(),
        ))
        .field(settings_field(
            "filesMaxCapacity",
            TypeRef::named(TypeRef::INT),
            |s| s.files_max_capacity.into(),
        ))
        .field(settings_field(
            "reposMaxCapacity",
            TypeRef::named(TypeRef::INT),
            |s| s.repos_max_capacity.into(),
        ))
        .field(settings_field(
            "verificationMaxCapacity",
            TypeRef::named(TypeRef::INT),
            |s| s.verification_max_capacity.into(),
        ))
        .field(settings_field(
            "containerRepositoriesMaxCapacity",
            TypeRef::named(TypeRef::INT),
            |s| s.container_repositories_max_capacity.into(),
        ))
        .field(settings_field(
            "minimumReverificationInterval",
            TypeRef::named(TypeRef::INT),
            |s| s.minimum_reverification_interval.into(),
        ))
        .field(settings_field(
            "selectiveSyncType",
            TypeRef::named(TypeRef::STRING),
            |s| opt(s.selective_sync_type.clone()),
        ))
        .field(settings_field(
            "selectiveSyncShards",
            TypeRef::named_nn_list(TypeRef::STRING),
            |s| {
                Value::List(
                    s.selective_sync_shards
                        .iter()
                        .map(|x| Value::String(x.clone()))
                        .collect(),
                )
            },
        ))
        .field(settings_field(
            "syncObjectStorage",
            TypeRef::named(TypeRef::BOOLEAN),
            |s| s.sync_object_storage.into(),
        ))
        .field(
            Field::new(
                "selectiveSyncNamespaces",
                TypeRef::named("NamespaceConnection"),
                |ctx| {
                    FieldFuture::new(async move {
                        let site = ctx.data::<Arc<Site>>()?;
                        let node = ctx.parent_value.try_downcast_ref::<NodeValue>()?;
                        let all = resolve::selective_sync_namespaces(site, node).await?;
                        let args = ListArgs {
                            first: int_arg(&ctx, "first")?,
                            after: cursor_arg(&ctx, "after")?,
                            last: int_arg(&ctx, "last")?,
                            before: cursor_arg(&ctx, "before")?,
                            ..ListArgs::default()
                        };
                        Ok(Some(FieldValue::owned_any(namespace_page(all, &args)?)))
                    })
                },
            )
            .argument(InputValue::new("first", TypeRef::named(TypeRef::INT)))
            .argument(InputValue::new("after", TypeRef::named(TypeRef::STRING)))
            .argument(InputValue::new("last", TypeRef::named(TypeRef::INT)))
            .argument(InputValue::new("before", TypeRef::named(TypeRef::STRING))),
        )
        .field(
            registries_field(
                "registries",
                TypeRef::named(format!("{REGISTRY_INTERFACE}Connection")),
                None,
                BASE_REGISTRY_ID,
            )
            .argument(InputValue::new(
                "replicableName",
                TypeRef::named_nn(TypeRef::STRING),
            )),
        );
    for it in types {
        let n = names(&it.identity);
        node = node.field(registries_field(
            &n.field,
            TypeRef::named(format!("{}Connection", n.type_name)),
            Some(it.name().to_string()),
            &n.id_type,
        ));
    }
    node
}

/// `GeoReplicableType`: what `geoReplicableTypes` lists.
fn replicable_type() -> Object {
    let text = |name: &str, get: fn(&ReplicableTypeValue) -> Value| {
        field_of::<ReplicableTypeValue>(name, TypeRef::named_nn(TypeRef::STRING), get)
    };
    Object::new("GeoReplicableType")
        .description("A replicable type installed on this site, with its GraphQL names")
        .field(text("name", |t| t.name.clone().into()))
        .field(text("namePlural", |t| t.name_plural.clone().into()))
        .field(text("title", |t| t.title.clone().into()))
        .field(text("titlePlural", |t| t.title_plural.clone().into()))
        .field(text("graphqlFieldName", |t| t.names.field.clone().into()))
        .field(text("graphqlRegistryType", |t| {
            t.names.type_name.clone().into()
        }))
        .field(text("graphqlRegistryClass", |t| {
            t.names.class.clone().into()
        }))
        .field(text("graphqlRegistryIdType", |t| {
            t.names.id_type.clone().into()
        }))
}

fn query() -> Object {
    Object::new("Query")
        .field(Field::new(
            "geoReplicableTypes",
            TypeRef::named_nn_list_nn("GeoReplicableType"),
            |ctx| {
                FieldFuture::new(async move {
                    let site = ctx.data::<Arc<Site>>()?;
                    Ok(Some(FieldValue::list(
                        resolve::replicable_types(site)
                            .into_iter()
                            .map(FieldValue::owned_any),
                    )))
                })
            },
        ))
        .field(
            Field::new("geoNode", TypeRef::named("GeoNode"), |ctx| {
                FieldFuture::new(async move {
                    let site = ctx.data::<Arc<Site>>()?;
                    let memory = ctx.data::<Arc<NodeMemory>>()?;
                    let name = string_arg(&ctx, "name")?;
                    Ok(resolve::geo_node(site, memory, name.as_deref())
                        .await?
                        .map(FieldValue::owned_any))
                })
            })
            .argument(InputValue::new("name", TypeRef::named(TypeRef::STRING))),
        )
}

fn mutation() -> Vec<Object> {
    let update = Field::new(
        "geoRegistriesUpdate",
        TypeRef::named("GeoRegistriesUpdatePayload"),
        |ctx| {
            FieldFuture::new(async move {
                let site = ctx.data::<Arc<Site>>()?;
                let input = ctx.args.try_get("input")?.object()?;
                let registry_id = input.try_get("registryId")?.string()?.to_string();
                let action = input.try_get("action")?.enum_name()?.to_string();
                let class = match input.get("registryClass") {
                    Some(v) if !v.is_null() => Some(v.enum_name()?.to_string()),
                    _ => None,
                };
                let client_mutation_id = match input.get("clientMutationId") {
                    Some(v) if !v.is_null() => Some(v.string()?.to_string()),
                    _ => None,
                };
                let registry =
                    resolve::update(site, &registry_id, &action, class.as_deref()).await?;
                Ok(Some(FieldValue::owned_any(UpdatePayload {
                    client_mutation_id,
                    errors: Vec::new(),
                    registry: Some(registry),
                })))
            })
        },
    )
    .argument(InputValue::new(
        "input",
        TypeRef::named_nn("GeoRegistriesUpdateInput"),
    ));
    let bulk = Field::new(
        "geoRegistriesBulkUpdate",
        TypeRef::named("GeoRegistriesBulkUpdatePayload"),
        |ctx| {
            FieldFuture::new(async move {
                let site = ctx.data::<Arc<Site>>()?;
                let input = ctx.args.try_get("input")?.object()?;
                let class = input.try_get("registryClass")?.enum_name()?.to_string();
                let action = input.try_get("action")?.enum_name()?.to_string();
                let ids = match input.get("ids") {
                    Some(v) if !v.is_null() => Some(
                        v.list()?
                            .iter()
                            .map(|id| id.string().map(str::to_string))
                            .collect::<Result<Vec<_>, _>>()?,
                    ),
                    _ => None,
                };
                let enum_of = |name: &str| -> Result<Option<String>, Error> {
                    match input.get(name) {
                        Some(v) if !v.is_null() => Ok(Some(v.enum_name()?.to_string())),
                        _ => Ok(None),
                    }
                };
                let args = BulkArgs {
                    ids,
                    replication_state: enum_of("replicationState")?,
                    verification_state: enum_of("verificationState")?,
                };
                let mut payload = resolve::bulk_update(site, &class, &action, args).await?;
                payload.client_mutation_id = match input.get("clientMutationId") {
                    Some(v) if !v.is_null() => Some(v.string()?.to_string()),
                    _ => None,
                };
                Ok(Some(FieldValue::owned_any(payload)))
            })
        },
    )
    .argument(InputValue::new(
        "input",
        TypeRef::named_nn("GeoRegistriesBulkUpdateInput"),
    ));
    let confirm = Field::new(
        "geoRegistriesConfirmRemovals",
        TypeRef::named("GeoRegistriesConfirmRemovalsPayload"),
        |ctx| {
            FieldFuture::new(async move {
                let site = ctx.data::<Arc<Site>>()?;
                let input = ctx.args.try_get("input")?.object()?;
                let class = input.try_get("registryClass")?.enum_name()?.to_string();
                let mut payload = resolve::confirm_removals(site, &class).await?;
                payload.client_mutation_id = match input.get("clientMutationId") {
                    Some(v) if !v.is_null() => Some(v.string()?.to_string()),
                    _ => None,
                };
                Ok(Some(FieldValue::owned_any(payload)))
            })
        },
    )
    .argument(InputValue::new(
        "input",
        TypeRef::named_nn("GeoRegistriesConfirmRemovalsInput"),
    ));
    let confirm_payload = Object::new("GeoRegistriesConfirmRemovalsPayload")
        .field(field_of::<ConfirmPayload>(
            "clientMutationId",
            TypeRef::named(TypeRef::STRING),
            |p| opt(p.client_mutation_id.clone()),
        ))
        .field(field_of::<ConfirmPayload>(
            "errors",
            TypeRef::named_nn_list_nn(TypeRef::STRING),
            |p| Value::List(p.errors.iter().map(|e| Value::String(e.clone())).collect()),
        ))
        .field(field_of::<ConfirmPayload>(
            "registryClass",
            TypeRef::named("GeoRegistryClass"),
            |p| p.registry_class.as_deref().map_or(Value::Null, enum_value),
        ))
        .field(field_of::<ConfirmPayload>(
            "removals",
            TypeRef::named(TypeRef::INT),
            |p| p.removals.map_or(Value::Null, Value::from),
        ));
    let update_payload = Object::new("GeoRegistriesUpdatePayload")
        .field(field_of::<UpdatePayload>(
            "clientMutationId",
            TypeRef::named(TypeRef::STRING),
            |p| opt(p.client_mutation_id.clone()),
        ))
        .field(field_of::<UpdatePayload>(
            "errors",
            TypeRef::named_nn_list_nn(TypeRef::STRING),
            |p| Value::List(p.errors.iter().map(|e| Value::String(e.clone())).collect()),
        ))
        .field(Field::new(
            "registry",
            TypeRef::named(REGISTRABLE_UNION),
            |ctx| {
                FieldFuture::new(async move {
                    let payload = ctx.parent_value.try_downcast_ref::<UpdatePayload>()?;
                    Ok(payload
                        .registry
                        .as_ref()
                        .map(|r| FieldValue::owned_any(r.clone()).with_type(r.type_name.clone())))
                })
            },
        ));
    let bulk_payload = Object::new("GeoRegistriesBulkUpdatePayload")
        .field(field_of::<BulkPayload>(
            "clientMutationId",
            TypeRef::named(TypeRef::STRING),
            |p| opt(p.client_mutation_id.clone()),
        ))
        .field(field_of::<BulkPayload>(
            "errors",
            TypeRef::named_nn_list_nn(TypeRef::STRING),
            |p| Value::List(p.errors.iter().map(|e| Value::String(e.clone())).collect()),
        ))
        .field(field_of::<BulkPayload>(
            "registryClass",
            TypeRef::named("GeoRegistryClass"),
            |p| p.registry_class.as_deref().map_or(Value::Null, enum_value),
        ));
    vec![
        Object::new("Mutation")
            .field(update)
            .field(bulk)
            .field(confirm),
        update_payload,
        bulk_payload,
        confirm_payload,
    ]
}

fn inputs() -> Vec<InputObject> {
    vec![
        InputObject::new("GeoRegistriesUpdateInput")
            .field(InputValue::new(
                "clientMutationId",
                TypeRef::named(TypeRef::STRING),
            ))
            .field(InputValue::new(
                "registryId",
                TypeRef::named_nn(BASE_REGISTRY_ID),
            ))
            .field(InputValue::new(
                "action",
                TypeRef::named_nn("GeoRegistryAction"),
            ))
            .field(InputValue::new(
                "registryClass",
                TypeRef::named("GeoRegistryClass"),
            )),
        InputObject::new("GeoRegistriesBulkUpdateInput")
            .field(InputValue::new(
                "clientMutationId",
                TypeRef::named(TypeRef::STRING),
            ))
            .field(InputValue::new(
                "registryClass",
                TypeRef::named_nn("GeoRegistryClass"),
            ))
            .field(InputValue::new(
                "action",
                TypeRef::named_nn("GeoRegistriesBulkAction"),
            ))
            .field(InputValue::new(
                "ids",
                TypeRef::named_nn_list(BASE_REGISTRY_ID),
            ))
            .field(InputValue::new(
                "replicationState",
                TypeRef::named("ReplicationStateEnum"),
            ))
            .field(InputValue::new(
                "verificationState",
                TypeRef::named("VerificationStateEnum"),
            )),
        InputObject::new("GeoRegistriesConfirmRemovalsInput")
            .field(InputValue::new(
                "clientMutationId",
                TypeRef::named(TypeRef::STRING),
            ))
            .field(InputValue::new(
                "registryClass",
                TypeRef::named_nn("GeoRegistryClass"),
            )),
    ]
}

/// A global-id scalar: GitLab's `GeoBaseRegistryID` (any registry,
/// `type_name` `None`) or `Geo<Type>RegistryID` (that type's registries).
/// It accepts GitLab's form, `gid://gitlab/Geo::<Type>/<id>`, and the
/// `gid://geo/<Type>/<id>` form earlier versions gave out.
fn registry_id_scalar(name: &str, type_name: Option<String>) -> Scalar {
    let example = format!(
        "gid://gitlab/Geo::{}/1",
        type_name.as_deref().unwrap_or("BaseRegistry")
    );
    Scalar::new(name)
        .description(format!(
            "A `{name}` is a global ID. It is encoded as a string.\n\n\
             An example `{name}` is: `\"{example}\"`."
        ))
        .validator(move |value| match value {
            Value::String(text) => resolve::is_registry_gid(text, type_name.as_deref()),
            _ => false,
        })
}

/// The schema for these installed types (at least one).
pub fn build(types: &[Arc<InstalledType>]) -> Result<Schema, SchemaError> {
    if types.is_empty() {
        return Err(SchemaError("no replicable type is installed".into()));
    }
    let mut builder = Schema::build("Query", Some("Mutation"), None)
        .register(query())
        .register(geo_node(types))
        .register(page_info())
        .register(replicable_type())
        .register(Scalar::new(TIME).description("ISO 8601 time, UTC"))
        .register(registry_id_scalar(BASE_REGISTRY_ID, None))
        .limit_depth(16)
        .limit_complexity(10_000);
    for e in enums() {
        builder = builder.register(e);
    }
    for input in inputs() {
        builder = builder.register(input);
    }
    for object in mutation() {
        builder = builder.register(object);
    }
    for object in namespace_types() {
        builder = builder.register(object);
    }
    let mut interface = Interface::new(REGISTRY_INTERFACE);
    for (name, ty, _) in registry_fields() {
        interface = interface.field(InterfaceField::new(name, ty));
    }
    builder = builder.register(interface);
    let (generic, generic_edge) = connection(REGISTRY_INTERFACE, true);
    builder = builder.register(generic).register(generic_edge);
    let mut union = Union::new(REGISTRABLE_UNION);
    let mut classes = Enum::new("GeoRegistryClass");
    for it in types {
        let n = names(&it.identity);
        let mut object = Object::new(&n.type_name)
            .implement(REGISTRY_INTERFACE)
            .description(format!(
                "Represents the Geo replication and verification state of a {}",
                it.identity.name
            ));
        for (name, ty, get) in registry_fields() {
            object = object.field(registry_field(name, ty, get));
        }
        object = object
            .field(
                Field::new("forceToRedownload", TypeRef::named(TypeRef::BOOLEAN), |_| {
                    FieldFuture::from_value(None)
                })
                .deprecation(Some(
                    "Removed from registry tables in the database in favor of the newer reusable framework",
                )),
            )
            .field(field_of::<RegistryValue>(
                &n.fk_field,
                TypeRef::named_nn(TypeRef::ID),
                |r| Value::String(r.row.model_id.to_string()),
            ));
        let (conn, edge) = connection(&n.type_name, false);
        builder = builder
            .register(object)
            .register(conn)
            .register(edge)
            .register(registry_id_scalar(&n.id_type, Some(n.type_name.clone())));
        union = union.possible_type(&n.type_name);
        classes = classes.item(n.class.clone());
    }
    builder.register(union).register(classes).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_gitlab() {
        let it = crate::secondary::testing::helm();
        let n = names(&it.identity);
        assert_eq!(n.type_name, "PackagesHelmMetadataCacheRegistry");
        assert_eq!(n.field, "packagesHelmMetadataCacheRegistries");
        assert_eq!(n.fk_field, "packagesHelmMetadataCacheId");
        assert_eq!(n.class, "PACKAGES_HELM_METADATA_CACHE_REGISTRY");
        assert_eq!(n.id_type, "GeoPackagesHelmMetadataCacheRegistryID");
        let sdl = build(&[it]).unwrap().sdl();
        for needle in [
            "packagesHelmMetadataCacheRegistries(ids: [GeoPackagesHelmMetadataCacheRegistryID!], replicationState: ReplicationStateEnum",
            "registries(ids: [GeoBaseRegistryID!]",
            "type PackagesHelmMetadataCacheRegistry implements GeoRegistry",
            "union RegistrableType = PackagesHelmMetadataCacheRegistry",
            "geoReplicableTypes: [GeoReplicableType!]!",
            "limit: Int = 1000",
            "geoRegistriesBulkUpdate(input: GeoRegistriesBulkUpdateInput!)",
            "registryId: GeoBaseRegistryID!",
            "ids: [GeoBaseRegistryID!]",
            "scalar GeoBaseRegistryID",
            "scalar GeoPackagesHelmMetadataCacheRegistryID",
            "PACKAGES_HELM_METADATA_CACHE_REGISTRY",
            "selectiveSyncNamespaces(first: Int, after: String, last: Int, before: String): NamespaceConnection",
        ] {
            assert!(sdl.contains(needle), "{needle} not in\n{sdl}");
        }
    }

    #[test]
    fn global_ids() {
        assert_eq!(
            resolve::parse_gid("gid://geo/PackagesHelmMetadataCacheRegistry/12"),
            Some((Some("PackagesHelmMetadataCacheRegistry".into()), 12))
        );
        assert_eq!(
            resolve::parse_gid("gid://gitlab/Geo::PackagesHelmMetadataCacheRegistry/3"),
            Some((Some("PackagesHelmMetadataCacheRegistry".into()), 3))
        );
        assert_eq!(resolve::parse_gid("7"), Some((None, 7)));
        let helm = "PackagesHelmMetadataCacheRegistry";
        for (text, any, typed) in [
            (
                "gid://gitlab/Geo::PackagesHelmMetadataCacheRegistry/3",
                true,
                true,
            ),
            ("gid://geo/PackagesHelmMetadataCacheRegistry/3", true, true),
            (
                "gid://gitlab/Geo::PackagesNpmMetadataCacheRegistry/3",
                true,
                false,
            ),
            ("gid://gitlab/Project/3", false, false),
            (
                "gid://gitlab/Geo::PackagesHelmMetadataCacheRegistry/x",
                false,
                false,
            ),
            (
                "gid://gitlab/Geo::PackagesHelmMetadataCacheRegistry/0",
                false,
                false,
            ),
            ("3", false, false),
        ] {
            assert_eq!(resolve::is_registry_gid(text, None), any, "{text}");
            assert_eq!(resolve::is_registry_gid(text, Some(helm)), typed, "{text}");
        }
        assert_eq!(resolve::parse_gid("gid://other/X/1"), None);
        assert_eq!(resolve::parse_gid("gid://geo/X/abc"), None);
    }
}
