-- What buildbot's revision 059 (the empty "alembic_initial" placeholder) stands for: the
-- master database of buildbot 3.4.1, whose head was 059. Buildbot 3.4 created a new database
-- with Model.metadata.create_all and stamped it 059 (buildbot/db/model.py Model.upgrade);
-- revisions 060 onwards alter these tables. Generated from buildbot 3.4.1's own models, as
-- create_all emits them for PostgreSQL, with nothing edited:
--
--   pip download --no-deps buildbot==3.4.1 && unzip buildbot-3.4.1-py3-none-any.whl -d /tmp/bb34
--   PYTHONPATH=/tmp/bb34:<buildbot 4.3's dependencies> python -c '
--   import sqlalchemy as sa, buildbot.db.model as model
--   engine = sa.create_mock_engine("postgresql+psycopg://",
--       lambda sql, *a, **k: print(str(sql.compile(dialect=engine.dialect)).strip() + ";\n"))
--   model.Model.metadata.create_all(engine, checkfirst=False)'

CREATE TABLE buildsets (
	id SERIAL NOT NULL, 
	external_idstring VARCHAR(256), 
	reason VARCHAR(256), 
	submitted_at INTEGER NOT NULL, 
	complete SMALLINT DEFAULT '0' NOT NULL, 
	complete_at INTEGER, 
	results SMALLINT, 
	parent_buildid INTEGER, 
	parent_relationship TEXT, 
	PRIMARY KEY (id)
);

CREATE INDEX buildsets_submitted_at ON buildsets (submitted_at);

CREATE INDEX buildsets_complete ON buildsets (complete);

CREATE TABLE changesources (
	id SERIAL NOT NULL, 
	name TEXT NOT NULL, 
	name_hash VARCHAR(40) NOT NULL, 
	PRIMARY KEY (id)
);

CREATE UNIQUE INDEX changesource_name_hash ON changesources (name_hash);

CREATE TABLE workers (
	id SERIAL NOT NULL, 
	name VARCHAR(50) NOT NULL, 
	info TEXT NOT NULL, 
	paused SMALLINT DEFAULT '0' NOT NULL, 
	graceful SMALLINT DEFAULT '0' NOT NULL, 
	PRIMARY KEY (id)
);

CREATE UNIQUE INDEX workers_name ON workers (name);

CREATE TABLE patches (
	id SERIAL NOT NULL, 
	patchlevel INTEGER NOT NULL, 
	patch_base64 TEXT NOT NULL, 
	patch_author TEXT NOT NULL, 
	patch_comment TEXT NOT NULL, 
	subdir TEXT, 
	PRIMARY KEY (id)
);

CREATE TABLE schedulers (
	id SERIAL NOT NULL, 
	name TEXT NOT NULL, 
	name_hash VARCHAR(40) NOT NULL, 
	enabled SMALLINT DEFAULT '1', 
	PRIMARY KEY (id)
);

CREATE UNIQUE INDEX scheduler_name_hash ON schedulers (name_hash);

CREATE TABLE builders (
	id SERIAL NOT NULL, 
	name TEXT NOT NULL, 
	description TEXT, 
	name_hash VARCHAR(40) NOT NULL, 
	PRIMARY KEY (id)
);

CREATE UNIQUE INDEX builder_name_hash ON builders (name_hash);

CREATE TABLE tags (
	id SERIAL NOT NULL, 
	name TEXT NOT NULL, 
	name_hash VARCHAR(40) NOT NULL, 
	PRIMARY KEY (id)
);

CREATE UNIQUE INDEX tag_name_hash ON tags (name_hash);

CREATE TABLE objects (
	id SERIAL NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	class_name VARCHAR(128) NOT NULL, 
	PRIMARY KEY (id)
);

CREATE UNIQUE INDEX object_identity ON objects (name, class_name);

CREATE TABLE users (
	uid SERIAL NOT NULL, 
	identifier VARCHAR(255) NOT NULL, 
	bb_username VARCHAR(128), 
	bb_password VARCHAR(128), 
	PRIMARY KEY (uid)
);

CREATE UNIQUE INDEX users_identifier ON users (identifier);

CREATE UNIQUE INDEX users_bb_user ON users (bb_username);

CREATE TABLE masters (
	id SERIAL NOT NULL, 
	name TEXT NOT NULL, 
	name_hash VARCHAR(40) NOT NULL, 
	active INTEGER NOT NULL, 
	last_active INTEGER NOT NULL, 
	PRIMARY KEY (id)
);

CREATE UNIQUE INDEX master_name_hashes ON masters (name_hash);

CREATE TABLE buildrequests (
	id SERIAL NOT NULL, 
	buildsetid INTEGER NOT NULL, 
	builderid INTEGER NOT NULL, 
	priority INTEGER DEFAULT '0' NOT NULL, 
	complete INTEGER DEFAULT '0', 
	results SMALLINT, 
	submitted_at INTEGER NOT NULL, 
	complete_at INTEGER, 
	waited_for SMALLINT DEFAULT '0', 
	PRIMARY KEY (id), 
	FOREIGN KEY(buildsetid) REFERENCES buildsets (id) ON DELETE CASCADE, 
	FOREIGN KEY(builderid) REFERENCES builders (id) ON DELETE CASCADE
);

CREATE INDEX buildrequests_complete ON buildrequests (complete);

CREATE INDEX buildrequests_buildsetid ON buildrequests (buildsetid);

CREATE INDEX buildrequests_builderid ON buildrequests (builderid);

CREATE TABLE builds (
	id SERIAL NOT NULL, 
	number INTEGER NOT NULL, 
	builderid INTEGER NOT NULL, 
	buildrequestid INTEGER NOT NULL, 
	workerid INTEGER, 
	masterid INTEGER NOT NULL, 
	started_at INTEGER NOT NULL, 
	complete_at INTEGER, 
	state_string TEXT NOT NULL, 
	results INTEGER, 
	PRIMARY KEY (id), 
	FOREIGN KEY(builderid) REFERENCES builders (id) ON DELETE CASCADE, 
	FOREIGN KEY(workerid) REFERENCES workers (id) ON DELETE SET NULL, 
	FOREIGN KEY(masterid) REFERENCES masters (id) ON DELETE CASCADE
);

CREATE INDEX builds_buildrequestid ON builds (buildrequestid);

CREATE INDEX builds_workerid ON builds (workerid);

CREATE UNIQUE INDEX builds_number ON builds (builderid, number);

CREATE INDEX builds_masterid ON builds (masterid);

CREATE TABLE buildset_properties (
	buildsetid INTEGER NOT NULL, 
	property_name VARCHAR(256) NOT NULL, 
	property_value TEXT NOT NULL, 
	FOREIGN KEY(buildsetid) REFERENCES buildsets (id) ON DELETE CASCADE
);

CREATE INDEX buildset_properties_buildsetid ON buildset_properties (buildsetid);

CREATE TABLE changesource_masters (
	changesourceid INTEGER NOT NULL, 
	masterid INTEGER NOT NULL, 
	PRIMARY KEY (changesourceid), 
	FOREIGN KEY(changesourceid) REFERENCES changesources (id) ON DELETE CASCADE, 
	FOREIGN KEY(masterid) REFERENCES masters (id) ON DELETE CASCADE
);

CREATE TABLE connected_workers (
	id SERIAL NOT NULL, 
	masterid INTEGER NOT NULL, 
	workerid INTEGER NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(masterid) REFERENCES masters (id) ON DELETE CASCADE, 
	FOREIGN KEY(workerid) REFERENCES workers (id) ON DELETE CASCADE
);

CREATE INDEX connected_workers_masterid ON connected_workers (masterid);

CREATE INDEX connected_workers_workers ON connected_workers (workerid);

CREATE UNIQUE INDEX connected_workers_identity ON connected_workers (masterid, workerid);

CREATE TABLE sourcestamps (
	id SERIAL NOT NULL, 
	ss_hash VARCHAR(40) NOT NULL, 
	branch VARCHAR(256), 
	revision VARCHAR(256), 
	patchid INTEGER, 
	repository VARCHAR(512) DEFAULT '' NOT NULL, 
	codebase VARCHAR(256) DEFAULT '' NOT NULL, 
	project VARCHAR(512) DEFAULT '' NOT NULL, 
	created_at INTEGER NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(patchid) REFERENCES patches (id) ON DELETE CASCADE
);

CREATE UNIQUE INDEX sourcestamps_ss_hash_key ON sourcestamps (ss_hash);

CREATE TABLE scheduler_masters (
	schedulerid INTEGER NOT NULL, 
	masterid INTEGER NOT NULL, 
	PRIMARY KEY (schedulerid), 
	FOREIGN KEY(schedulerid) REFERENCES schedulers (id) ON DELETE CASCADE, 
	FOREIGN KEY(masterid) REFERENCES masters (id) ON DELETE CASCADE
);

CREATE TABLE builder_masters (
	id SERIAL NOT NULL, 
	builderid INTEGER NOT NULL, 
	masterid INTEGER NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(builderid) REFERENCES builders (id) ON DELETE CASCADE, 
	FOREIGN KEY(masterid) REFERENCES masters (id) ON DELETE CASCADE
);

CREATE INDEX builder_masters_masterid ON builder_masters (masterid);

CREATE INDEX builder_masters_builderid ON builder_masters (builderid);

CREATE UNIQUE INDEX builder_masters_identity ON builder_masters (builderid, masterid);

CREATE TABLE builders_tags (
	id SERIAL NOT NULL, 
	builderid INTEGER NOT NULL, 
	tagid INTEGER NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(builderid) REFERENCES builders (id) ON DELETE CASCADE, 
	FOREIGN KEY(tagid) REFERENCES tags (id) ON DELETE CASCADE
);

CREATE INDEX builders_tags_builderid ON builders_tags (builderid);

CREATE UNIQUE INDEX builders_tags_unique ON builders_tags (builderid, tagid);

CREATE TABLE test_names (
	id SERIAL NOT NULL, 
	builderid INTEGER NOT NULL, 
	name TEXT NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(builderid) REFERENCES builders (id) ON DELETE CASCADE
);

CREATE INDEX test_names_name ON test_names (builderid, name);

CREATE TABLE test_code_paths (
	id SERIAL NOT NULL, 
	builderid INTEGER NOT NULL, 
	path TEXT NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(builderid) REFERENCES builders (id) ON DELETE CASCADE
);

CREATE INDEX test_code_paths_path ON test_code_paths (builderid, path);

CREATE TABLE object_state (
	objectid INTEGER NOT NULL, 
	name VARCHAR(255) NOT NULL, 
	value_json TEXT NOT NULL, 
	FOREIGN KEY(objectid) REFERENCES objects (id) ON DELETE CASCADE
);

CREATE UNIQUE INDEX name_per_object ON object_state (objectid, name);

CREATE TABLE users_info (
	uid INTEGER NOT NULL, 
	attr_type VARCHAR(128) NOT NULL, 
	attr_data VARCHAR(128) NOT NULL, 
	FOREIGN KEY(uid) REFERENCES users (uid) ON DELETE CASCADE
);

CREATE INDEX users_info_uid ON users_info (uid);

CREATE UNIQUE INDEX users_info_attrs ON users_info (attr_type, attr_data);

CREATE UNIQUE INDEX users_info_uid_attr_type ON users_info (uid, attr_type);

CREATE TABLE buildrequest_claims (
	brid INTEGER NOT NULL, 
	masterid INTEGER NOT NULL, 
	claimed_at INTEGER NOT NULL, 
	FOREIGN KEY(brid) REFERENCES buildrequests (id) ON DELETE CASCADE, 
	FOREIGN KEY(masterid) REFERENCES masters (id) ON DELETE CASCADE
);

CREATE INDEX ix_buildrequest_claims_masterid ON buildrequest_claims (masterid);

CREATE UNIQUE INDEX buildrequest_claims_brids ON buildrequest_claims (brid);

CREATE TABLE build_properties (
	buildid INTEGER NOT NULL, 
	name VARCHAR(256) NOT NULL, 
	value TEXT NOT NULL, 
	source VARCHAR(256) NOT NULL, 
	FOREIGN KEY(buildid) REFERENCES builds (id) ON DELETE CASCADE
);

CREATE INDEX build_properties_buildid ON build_properties (buildid);

CREATE TABLE build_data (
	id SERIAL NOT NULL, 
	buildid INTEGER NOT NULL, 
	name VARCHAR(256) NOT NULL, 
	value BYTEA NOT NULL, 
	length INTEGER NOT NULL, 
	source VARCHAR(256) NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(buildid) REFERENCES builds (id) ON DELETE CASCADE
);

CREATE UNIQUE INDEX build_data_buildid_name ON build_data (buildid, name);

CREATE TABLE steps (
	id SERIAL NOT NULL, 
	number INTEGER NOT NULL, 
	name VARCHAR(50) NOT NULL, 
	buildid INTEGER NOT NULL, 
	started_at INTEGER, 
	complete_at INTEGER, 
	state_string TEXT NOT NULL, 
	results INTEGER, 
	urls_json TEXT NOT NULL, 
	hidden SMALLINT DEFAULT '0' NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(buildid) REFERENCES builds (id) ON DELETE CASCADE
);

CREATE UNIQUE INDEX steps_number ON steps (buildid, number);

CREATE UNIQUE INDEX steps_name ON steps (buildid, name);

CREATE INDEX steps_started_at ON steps (started_at);

CREATE TABLE configured_workers (
	id SERIAL NOT NULL, 
	buildermasterid INTEGER NOT NULL, 
	workerid INTEGER NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(buildermasterid) REFERENCES builder_masters (id) ON DELETE CASCADE, 
	FOREIGN KEY(workerid) REFERENCES workers (id) ON DELETE CASCADE
);

CREATE INDEX configured_workers_workers ON configured_workers (workerid);

CREATE INDEX configured_workers_buildmasterid ON configured_workers (buildermasterid);

CREATE UNIQUE INDEX configured_workers_identity ON configured_workers (buildermasterid, workerid);

CREATE TABLE changes (
	changeid SERIAL NOT NULL, 
	author VARCHAR(255) NOT NULL, 
	committer VARCHAR(255), 
	comments TEXT NOT NULL, 
	branch VARCHAR(255), 
	revision VARCHAR(255), 
	revlink VARCHAR(256), 
	when_timestamp INTEGER NOT NULL, 
	category VARCHAR(255), 
	repository VARCHAR(512) DEFAULT '' NOT NULL, 
	codebase VARCHAR(256) DEFAULT '' NOT NULL, 
	project VARCHAR(512) DEFAULT '' NOT NULL, 
	sourcestampid INTEGER NOT NULL, 
	parent_changeids INTEGER, 
	PRIMARY KEY (changeid), 
	FOREIGN KEY(sourcestampid) REFERENCES sourcestamps (id) ON DELETE CASCADE, 
	FOREIGN KEY(parent_changeids) REFERENCES changes (changeid) ON DELETE SET NULL
);

CREATE INDEX changes_category ON changes (category);

CREATE INDEX changes_when_timestamp ON changes (when_timestamp);

CREATE INDEX changes_revision ON changes (revision);

CREATE INDEX changes_branch ON changes (branch);

CREATE INDEX changes_sourcestampid ON changes (sourcestampid);

CREATE INDEX changes_author ON changes (author);

CREATE TABLE buildset_sourcestamps (
	id SERIAL NOT NULL, 
	buildsetid INTEGER NOT NULL, 
	sourcestampid INTEGER NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(buildsetid) REFERENCES buildsets (id) ON DELETE CASCADE, 
	FOREIGN KEY(sourcestampid) REFERENCES sourcestamps (id) ON DELETE CASCADE
);

CREATE INDEX buildset_sourcestamps_buildsetid ON buildset_sourcestamps (buildsetid);

CREATE UNIQUE INDEX buildset_sourcestamps_unique ON buildset_sourcestamps (buildsetid, sourcestampid);

CREATE TABLE logs (
	id SERIAL NOT NULL, 
	name TEXT NOT NULL, 
	slug VARCHAR(50) NOT NULL, 
	stepid INTEGER NOT NULL, 
	complete SMALLINT NOT NULL, 
	num_lines INTEGER NOT NULL, 
	type VARCHAR(1) NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(stepid) REFERENCES steps (id) ON DELETE CASCADE
);

CREATE UNIQUE INDEX logs_slug ON logs (stepid, slug);

CREATE TABLE change_files (
	changeid INTEGER NOT NULL, 
	filename VARCHAR(1024) NOT NULL, 
	FOREIGN KEY(changeid) REFERENCES changes (changeid) ON DELETE CASCADE
);

CREATE INDEX change_files_changeid ON change_files (changeid);

CREATE TABLE change_properties (
	changeid INTEGER NOT NULL, 
	property_name VARCHAR(256) NOT NULL, 
	property_value TEXT NOT NULL, 
	FOREIGN KEY(changeid) REFERENCES changes (changeid) ON DELETE CASCADE
);

CREATE INDEX change_properties_changeid ON change_properties (changeid);

CREATE TABLE change_users (
	changeid INTEGER NOT NULL, 
	uid INTEGER NOT NULL, 
	FOREIGN KEY(changeid) REFERENCES changes (changeid) ON DELETE CASCADE, 
	FOREIGN KEY(uid) REFERENCES users (uid) ON DELETE CASCADE
);

CREATE INDEX change_users_changeid ON change_users (changeid);

CREATE TABLE scheduler_changes (
	schedulerid INTEGER NOT NULL, 
	changeid INTEGER NOT NULL, 
	important INTEGER, 
	FOREIGN KEY(schedulerid) REFERENCES schedulers (id) ON DELETE CASCADE, 
	FOREIGN KEY(changeid) REFERENCES changes (changeid) ON DELETE CASCADE
);

CREATE INDEX scheduler_changes_changeid ON scheduler_changes (changeid);

CREATE INDEX scheduler_changes_schedulerid ON scheduler_changes (schedulerid);

CREATE UNIQUE INDEX scheduler_changes_unique ON scheduler_changes (schedulerid, changeid);

CREATE TABLE test_result_sets (
	id SERIAL NOT NULL, 
	builderid INTEGER NOT NULL, 
	buildid INTEGER NOT NULL, 
	stepid INTEGER NOT NULL, 
	description TEXT, 
	category TEXT NOT NULL, 
	value_unit TEXT NOT NULL, 
	tests_passed INTEGER, 
	tests_failed INTEGER, 
	complete SMALLINT NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(builderid) REFERENCES builders (id) ON DELETE CASCADE, 
	FOREIGN KEY(buildid) REFERENCES builds (id) ON DELETE CASCADE, 
	FOREIGN KEY(stepid) REFERENCES steps (id) ON DELETE CASCADE
);

CREATE TABLE logchunks (
	logid INTEGER NOT NULL, 
	first_line INTEGER NOT NULL, 
	last_line INTEGER NOT NULL, 
	content BYTEA, 
	compressed SMALLINT NOT NULL, 
	FOREIGN KEY(logid) REFERENCES logs (id) ON DELETE CASCADE
);

CREATE INDEX logchunks_lastline ON logchunks (logid, last_line);

CREATE INDEX logchunks_firstline ON logchunks (logid, first_line);

CREATE TABLE test_results (
	id SERIAL NOT NULL, 
	builderid INTEGER NOT NULL, 
	test_result_setid INTEGER NOT NULL, 
	test_nameid INTEGER, 
	test_code_pathid INTEGER, 
	line INTEGER, 
	duration_ns INTEGER, 
	value TEXT NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(builderid) REFERENCES builders (id) ON DELETE CASCADE, 
	FOREIGN KEY(test_result_setid) REFERENCES test_result_sets (id) ON DELETE CASCADE, 
	FOREIGN KEY(test_nameid) REFERENCES test_names (id) ON DELETE CASCADE, 
	FOREIGN KEY(test_code_pathid) REFERENCES test_code_paths (id) ON DELETE CASCADE
);

ALTER TABLE builds ADD CONSTRAINT buildrequestid FOREIGN KEY(buildrequestid) REFERENCES buildrequests (id) ON DELETE CASCADE;

ALTER TABLE buildsets ADD CONSTRAINT parent_buildid FOREIGN KEY(parent_buildid) REFERENCES builds (id) ON DELETE SET NULL;
