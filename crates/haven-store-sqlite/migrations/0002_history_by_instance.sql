-- Instance history (`Patient/1/_history`) pages by seq within one resource; without this index
-- the planner may walk every version of the type.
CREATE INDEX resource_version_by_instance ON resource_version (resource_type, id, seq);
