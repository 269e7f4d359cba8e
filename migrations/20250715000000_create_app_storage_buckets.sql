-- The two private Storage buckets of the app platform.
--
--   app-storage  the apps' files as published (manifest, sources, lockfiles, archives, assets),
--                under `app_{appId}/{version}/{path}`; 100 MB per object.
--   app-logs     what runs produce: live log chunks, the compacted stdout.log / stderr.log and
--                the files an app writes to /output, under `app_{appId}/runs/{runId}/`; 50 MB
--                per object (the per-stream log cap is the same number).
--
-- Limits are enforced by Supabase Storage (and by the daemon's local backend, which reads the
-- same rows). MIME types match exactly or by `type/*`; parameters such as `;charset=` are not
-- stripped by the server, so uploads must send the bare type.
-- Access is governed by the RLS policies on storage.objects in the schema migration.

insert into storage.buckets (id, name, public, file_size_limit, allowed_mime_types)
values
  (
    'app-storage', 'app-storage', false, 104857600,
    array[
      'application/json',
      'application/javascript',
      'text/javascript',
      'application/typescript',
      'text/plain',
      'text/markdown',
      'text/html',
      'text/css',
      'text/csv',
      'application/yaml',
      'application/x-yaml',
      'application/gzip',
      'application/x-gzip',
      'application/x-tar',
      'application/zip',
      'application/octet-stream',
      'application/wasm',
      'image/*',
      'font/*'
    ]
  ),
  (
    'app-logs', 'app-logs', false, 52428800,
    array[
      'text/plain',
      'application/json',
      'application/x-ndjson',
      'text/csv',
      'text/html',
      'application/octet-stream',
      'image/*'
    ]
  )
on conflict (id) do update
  set public = excluded.public,
      file_size_limit = excluded.file_size_limit,
      allowed_mime_types = excluded.allowed_mime_types;
