-- The original design document's names and values (shared/seed), which the host platform's code
-- and operators follow. Where our first schema named the same thing differently it is renamed
-- here (nothing was deployed under the old names); our extra columns and values stay, each
-- carrying something the document lacks (see the README's "Schema" section).
--
-- app_storage.file_path is now what the document says: the object key in the `app-storage`
-- bucket ("Path in storage bucket", its example `app_<appId>/manifest.json`), always under the
-- row's own `app_<app_id>/` folder. The path a file gets inside the app's directory is derived
-- from the key: strip `app_<app_id>/`, then `<version>/` when the key has that folder.

-- Whether `key` is a safe object key inside `app`'s own folder of `app-storage`: under
-- `app_<app uuid>/` (lowercase, as uuid::text prints it), no empty, `.` or `..` segment, no
-- trailing `/`, and only the characters Supabase Storage accepts in keys (so no `\`).
create function app_exec.is_app_object_key(app uuid, key text) returns boolean
language sql immutable
set search_path = ''
as $$
  select key is not null
    and pg_catalog.starts_with(key, 'app_' || app::text || '/')
    and key ~ '^[A-Za-z0-9_/!.*''() &$=@;:+,?-]+$'
    and key !~ '(^|/)\.{0,2}(/|$)'
$$;
grant execute on function app_exec.is_app_object_key(uuid, text) to anon, authenticated, service_role;

-- app_storage ---------------------------------------------------------------------------------

alter table public.app_storage drop constraint app_storage_file_key;
alter table public.app_storage drop constraint app_storage_path_relative;
alter table public.app_storage drop column file_path;
alter table public.app_storage rename column storage_path to file_path;
alter index public.app_storage_storage_path_idx rename to app_storage_file_path_idx;
alter table public.app_storage
  add column metadata jsonb not null default '{}'::jsonb,
  add constraint app_storage_file_key unique (app_id, version, file_path),
  add constraint app_storage_file_path_in_app_folder
    check (app_exec.is_app_object_key(app_id, file_path)),
  drop constraint app_storage_file_type_check,
  add constraint app_storage_file_type_check
    check (file_type in ('manifest', 'source', 'build', 'asset', 'dist', 'config', 'archive', 'other'));

comment on column public.app_storage.file_path is
  'object key in the app-storage bucket, under app_<app_id>/; the file''s path inside the app is the key without app_<app_id>/ and, when present, without a <version>/ folder';
comment on column public.app_storage.file_type is
  'manifest, source, build, asset, dist, config (the document''s), archive (extracted into the app root before it runs), other';
comment on column public.app_storage.mime_type is
  'Content-Type the object was uploaded with (app-executor addition)';

-- app_builds ----------------------------------------------------------------------------------

alter table public.app_builds rename column version to build_version;
alter index public.app_builds_app_version_idx rename to app_builds_app_build_version_idx;
alter table public.app_builds
  add column build_path text,
  add column build_config jsonb not null default '{}'::jsonb,
  add column build_logs text,
  drop constraint app_builds_build_status_check,
  add constraint app_builds_build_status_check
    check (build_status in ('pending', 'building', 'success', 'failed', 'cancelled')),
  add constraint app_builds_build_path_in_app_folder
    check (build_path is null or app_exec.is_app_object_key(app_id, build_path)),
  add constraint app_builds_build_logs_capped check (octet_length(build_logs) <= 65536);

comment on column public.app_builds.build_version is
  'the app version (app_storage.version) this build was made from';
comment on column public.app_builds.build_path is
  'object key of the build artifact in the app-storage bucket, under app_<app_id>/';
comment on column public.app_builds.build_config is
  'how to build: {"script": name of the package.json script, "env": {...}, "timeout": seconds}';
comment on column public.app_builds.build_logs is
  'the build log''s text, at most its last 64 KiB; the whole log is in app-logs at build_log_path';
comment on column public.app_builds.build_log_path is
  'key prefix of the whole build log in the app-logs bucket (app-executor addition)';

-- app_runs ------------------------------------------------------------------------------------

alter table public.app_runs
  drop constraint app_runs_run_type_check,
  add constraint app_runs_run_type_check
    check (run_type in ('manual', 'cron', 'webhook', 'test', 'api'));

comment on column public.app_runs.run_type is
  'manual, cron, webhook, test (the document''s), api (created through an API by another system: app-executor addition)';

-- app_outputs ---------------------------------------------------------------------------------

alter table public.app_outputs rename column name to output_name;
alter table public.app_outputs rename column file_path to output_path;

comment on column public.app_outputs.output_path is
  'object key of the output in the app-logs bucket (files and compacted logs)';

-- app_permissions -----------------------------------------------------------------------------

alter table public.app_permissions rename column scope to permission_value;
alter table public.app_permissions
  add column description text,
  add column is_required boolean not null default false,
  drop constraint app_permissions_permission_type_check,
  add constraint app_permissions_permission_type_check
    check (permission_type in ('storage', 'network', 'database', 'api', 'system', 'custom', 'secrets', 'filesystem'));

comment on column public.app_permissions.permission_value is
  'the scope granted (the manifest''s "scope"); * grants every scope of the type';
comment on column public.app_permissions.is_required is
  'whether the app''s manifest marks the permission required';
