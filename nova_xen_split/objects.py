"""Plain stand-ins for the Nova objects the driver is handed.

The driver reads its arguments the way Nova's XenAPI driver did
(``instance.uuid``, ``instance.flavor.root_gb``, ``image_meta.disk_format``,
``image_meta.properties.get('vm_mode')``), so under Nova it takes Nova's own
objects. Without Nova installed, these small classes have the same shapes; the
``*_from`` helpers also accept plain dicts.
"""

import dataclasses
import uuid as uuidlib


@dataclasses.dataclass
class RequestContext:
    """The part of ``nova.context.RequestContext`` the driver reads."""

    auth_token: str = None
    project_id: str = None
    user_id: str = None
    request_id: str = dataclasses.field(
        default_factory=lambda: "req-%s" % uuidlib.uuid4())


@dataclasses.dataclass
class Flavor:
    """``nova.objects.Flavor``: sizes in Nova's units (MB, GB, swap in MB)."""

    name: str = "m1.small"
    memory_mb: int = 512
    vcpus: int = 1
    root_gb: int = 1
    ephemeral_gb: int = 0
    swap: int = 0
    extra_specs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ImageMetaProps:
    """``nova.objects.ImageMetaProps`` reduced to a dict with ``get``."""

    values: dict = dataclasses.field(default_factory=dict)

    def get(self, name, default=None):
        return self.values.get(name, default)

    def __contains__(self, name):
        return name in self.values


@dataclasses.dataclass
class ImageMeta:
    """``nova.objects.ImageMeta``: what the image service says of an image."""

    id: str = None
    name: str = None
    disk_format: str = "raw"
    container_format: str = "bare"
    size: int = None
    properties: ImageMetaProps = dataclasses.field(default_factory=ImageMetaProps)


@dataclasses.dataclass
class Instance:
    """``nova.objects.Instance``: the fields a spawn reads.

    ``user_data`` is base64 text, as Nova stores it; ``key_data`` the public
    key of ``key_name``; ``metadata`` the user's key/value metadata.
    """

    uuid: str = dataclasses.field(default_factory=lambda: str(uuidlib.uuid4()))
    name: str = None
    hostname: str = "instance"
    display_name: str = None
    project_id: str = None
    user_id: str = None
    flavor: Flavor = dataclasses.field(default_factory=Flavor)
    image_ref: str = None
    kernel_id: str = None
    ramdisk_id: str = None
    config_drive: str = ""
    user_data: str = None
    key_name: str = None
    key_data: str = None
    metadata: dict = dataclasses.field(default_factory=dict)
    availability_zone: str = None
    launch_index: int = 0
    host: str = None

    def __post_init__(self):
        if self.name is None:
            # Nova's instance_name_template is 'instance-%08x' of the db id; we
            # have no db id, so the uuid's first 8 hex digits stand in.
            self.name = "instance-%s" % self.uuid.replace("-", "")[:8]
        if self.display_name is None:
            self.display_name = self.hostname


def _field(source, name, default=None):
    if isinstance(source, dict):
        return source.get(name, default)
    return getattr(source, name, default)


def flavor_from(source):
    """A :class:`Flavor` from a Flavor-shaped object or a dict."""
    if isinstance(source, Flavor):
        return source
    fields = {f.name: _field(source, f.name) for f in dataclasses.fields(Flavor)}
    return Flavor(**{k: v for k, v in fields.items() if v is not None})


def image_meta_from(source):
    """An :class:`ImageMeta` from Nova's ImageMeta, ours, or an image dict."""
    if isinstance(source, ImageMeta):
        return source
    props = _field(source, "properties", None)
    if props is None:
        props_dict = {}
    elif isinstance(props, dict):
        props_dict = dict(props)
    elif isinstance(props, ImageMetaProps):
        props_dict = dict(props.values)
    elif hasattr(props, "obj_to_primitive"):  # Nova's ImageMetaProps
        props_dict = {k: getattr(props, k) for k in props.obj_fields
                      if props.obj_attr_is_set(k)}
    else:
        props_dict = dict(vars(props))
    return ImageMeta(
        id=_field(source, "id"),
        name=_field(source, "name"),
        disk_format=_field(source, "disk_format") or "raw",
        container_format=_field(source, "container_format") or "bare",
        size=_field(source, "size"),
        properties=ImageMetaProps(props_dict))


def instance_from(source):
    """An :class:`Instance` from an Instance-shaped object or a dict."""
    if isinstance(source, Instance):
        return source
    fields = {}
    for f in dataclasses.fields(Instance):
        value = _field(source, f.name)
        if value is not None:
            fields[f.name] = value
    if "flavor" in fields:
        fields["flavor"] = flavor_from(fields["flavor"])
    return Instance(**fields)
