-- Hot swap: the WIT version a component was built against, and the last
-- validation error of a version that was refused.
ALTER TABLE plugin_versions ADD COLUMN wit_version text;
ALTER TABLE plugin_versions ADD COLUMN last_validation_error text;
ALTER TABLE plugin_versions ADD COLUMN activated_at timestamptz;
